"""The sampled distribution and the pruning masks, checked against their definitions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import masks
from jaxprune.data import group_data, observed_labels, sample_set, stream_key
from jaxprune.spec import Static

BASE = Static(d=400, n=4000, n_test=8, width=25, signal_support=1, noise_orthogonal=False,
              activation_power=3.0, output_scale="mean", patch_pool="sum", bias=False,
              init="normal", mask="bernoulli", nested=True, optimizer="gd", momentum=0.9,
              steps=1, eval_every=1, dtype="float64")


def samples(static=BASE, seed=0, count=None):
    return jax.device_get(sample_set(stream_key(jnp.uint32(seed), "train"),
                                     count or static.n, static, np.float64))


def test_noise_is_standard_normal_and_labels_balanced():
    s = samples()
    z = s.noise
    # 1.6M draws: the mean and variance are known to within a few 1e-3.
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 4 / np.sqrt(len(z))
    assert set(np.unique(s.clean)) == {-1.0, 1.0}
    assert abs(s.clean.mean()) < 4 / np.sqrt(len(s.clean))


def test_label_flip_rate_and_clean_labels():
    s = samples()
    for rate in (0.0, 0.1, 0.3):
        y = np.asarray(observed_labels(s, rate))
        flipped = np.mean(y != s.clean)
        assert abs(flipped - rate) < 4 * np.sqrt(rate * (1 - rate) / len(y)) + 1e-12
    # Nested flips: the examples flipped at 0.1 are flipped at 0.3 as well.
    assert np.all((np.asarray(observed_labels(s, 0.1)) != s.clean)
                  <= (np.asarray(observed_labels(s, 0.3)) != s.clean))


def test_orthogonal_noise_has_no_component_along_mu():
    static = dataclasses.replace(BASE, noise_orthogonal=True, signal_support=3, n=50)
    z = samples(static).noise
    u = np.zeros(static.d)
    u[:3] = 1 / np.sqrt(3)
    np.testing.assert_allclose(z @ u, 0, atol=1e-12)
    # Coordinates off the support are untouched.
    plain = samples(dataclasses.replace(static, noise_orthogonal=False)).noise
    np.testing.assert_array_equal(z[:, 3:], plain[:, 3:])


def test_draws_do_not_depend_on_padding():
    small = dataclasses.replace(BASE, d=30, n=5, width=3)
    big = dataclasses.replace(BASE, d=50, n=9, width=6)
    a, b = (jax.device_get(group_data(jnp.uint32(7), s)) for s in (small, big))
    np.testing.assert_array_equal(a.train.noise, b.train.noise[:5, :30])
    np.testing.assert_array_equal(a.train.clean, b.train.clean[:5])
    np.testing.assert_array_equal(a.init_base, b.init_base[:, :3, :30])
    np.testing.assert_array_equal(a.mask_scores, b.mask_scores[:, :3, :30])
    np.testing.assert_array_equal(a.bias_base, b.bias_base[:, :3])
    # Different seeds and different streams give different draws.
    c = jax.device_get(group_data(jnp.uint32(8), small))
    assert not np.allclose(a.train.noise, c.train.noise)


def mask_of(fraction, static=BASE, seed=3, d=None, width=None):
    g = group_data(jnp.uint32(seed), static)
    return np.asarray(masks.prune_mask(
        g.mask_scores, jnp.uint32(seed), jnp.asarray(fraction, jnp.float64),
        jnp.int32(d or static.d), jnp.int32(width or static.width), static))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9, 0.99])
def test_bernoulli_fraction_within_sampling_error(fraction):
    mask = mask_of(fraction)
    pruned = 1 - mask.mean()
    assert abs(pruned - fraction) <= 4 * np.sqrt(fraction * (1 - fraction) / mask.size) + 1e-12


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.55, 0.9, 0.999])
def test_exact_mask_keeps_round_1mp_d_per_filter(fraction):
    static = dataclasses.replace(BASE, mask="exact")
    mask = mask_of(fraction, static, d=301, width=20)  # padded to d = 400, width = 25
    keep = int(np.floor((1 - fraction) * 301 + 0.5))
    np.testing.assert_array_equal(mask[:, :20, :].sum(-1), keep)
    assert not mask[:, 20:, :].any() and not mask[:, :, 301:].any()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_exact_mask_rounds_halves_up_in_either_float_type(dtype):
    # (1 - p) d = 1.5, 2.5, 7.5, 0.5, 3.5 exactly; 2, 4 and 0.499 are not halves.
    cases = [(0.9, 15, 2), (0.9, 25, 3), (0.5, 15, 8), (0.95, 10, 1), (0.3, 5, 4),
             (0.8, 10, 2), (0.6, 10, 4), (0.0, 7, 7), (0.9997505, 2000, 0)]
    fractions = jnp.asarray([p for p, _, _ in cases], dtype)
    d = jnp.asarray([d for _, d, _ in cases], jnp.int32)
    np.testing.assert_array_equal(masks.kept_count(fractions, d), [k for _, _, k in cases])


@pytest.mark.parametrize("kind", ["bernoulli", "exact"])
def test_nested_masks_are_subsets_and_unnested_are_not(kind):
    static = dataclasses.replace(BASE, mask=kind)
    fractions = [0.0, 0.2, 0.5, 0.8, 0.95]
    nested = [mask_of(p, static) for p in fractions]
    for smaller, larger in zip(nested, nested[1:]):
        assert np.all(larger <= smaller) and larger.sum() < smaller.sum()
    loose = [mask_of(p, dataclasses.replace(static, nested=False)) for p in fractions]
    assert any(np.any(larger & ~smaller) for smaller, larger in zip(loose, loose[1:]))
    assert abs((1 - loose[2].mean()) - 0.5) < 0.01  # still the right fraction


def test_signal_filters_counts_filters_touching_the_support():
    static = dataclasses.replace(BASE, signal_support=2, d=6, width=3)
    mask = np.zeros((2, 3, 6), bool)
    mask[0, 0, 1] = mask[0, 2, 0] = mask[0, 1, 5] = True  # class +1: filters 0 and 2 see it
    mask[1, :, 2:] = True  # class -1: none does
    np.testing.assert_array_equal(masks.signal_filters(jnp.asarray(mask), static), [2, 0])


def test_make_groups_in_batches_equals_each_seed_drawn_alone():
    """``make_groups`` draws a few seeds at a time; every seed's draws are those of
    ``group_data`` for that seed alone, in full batches and in the remainder."""
    from jaxprune import train

    static = dataclasses.replace(BASE, n=500, groups=5)
    seeds = jnp.arange(10, 15, dtype=jnp.uint32)
    one_seed = jax.eval_shape(lambda s: group_data(s, static), seeds[0])
    batch = train.BLOCK_BYTES // sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(one_seed))
    assert 1 < batch < static.groups and static.groups % batch  # both paths are exercised
    got = train.make_groups(seeds, static)
    for s, seed in enumerate(seeds):
        alone = group_data(seed, static)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(a[s], b)
