"""The signal-noise distribution D(mu, sigma_p, label_flip), sampled on device from seeds.

An example is two patches: ``y~ * mu`` (the signal) and ``xi ~ N(0, sigma_p^2 I_d)`` (the
noise), with ``mu = signal_norm / sqrt(s) * (e_1 + ... + e_s)``. What is stored here is the
part shared by every run of a seed: the clean labels, uniform draws that decide label flips,
and the *standardized* noise ``z = xi / sigma_p`` (projected onto the complement of mu when
``noise_orthogonal``). ``signal_norm``, ``noise_std`` and ``label_flip`` are applied per run.

Every random number is drawn per example (and per filter) from ``fold_in`` of the seed's named
stream, with coordinate j of a row the j-th draw of that row's key: the values a run sees do
not depend on padding, so ``d`` = 1000 and ``d`` = 1200 share their first 1000 coordinates.
Draws are always made in float32 and then cast, so a float64 sweep sees the same data as a
float32 one, whatever JAX's x64 mode.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.spec import Static

__all__ = ["STREAMS", "CLEAN_LABELS", "Samples", "GroupData", "stream_key", "sample_set",
           "group_data", "observed_labels", "filter_rows", "normal", "uniform"]

#: Named random streams of a seed; a run's randomness never depends on its batch position.
STREAMS = {"train": 1, "test": 2, "init": 3, "bias": 4, "mask": 5}

#: The values of a clean label ``y~``.
CLEAN_LABELS = (1.0, -1.0)


class Samples(NamedTuple):
    """A sample set shared by the runs of one seed.

    Attributes:
      noise: ``(N, d)`` standardized noise patches ``z`` (``xi = noise_std * z``).
      clean: ``(N,)`` clean labels ``y~`` in {-1, +1}.
      flip_draw: ``(N,)`` uniform draws; the label is flipped where ``flip_draw < label_flip``.
    """

    noise: jax.Array
    clean: jax.Array
    flip_draw: jax.Array


class GroupData(NamedTuple):
    """Everything a seed fixes: data, initialization draws and mask scores.

    Attributes:
      train, test: the sample sets.
      init_base: ``(2, m, d)`` standard draws of the first-layer weights (N(0,1) or U(-1,1)).
      bias_base: ``(2, m)`` U(-1, 1) draws for the bias (``init = "uniform_fan_in"``).
      mask_scores: ``(2, m, d)`` U(0, 1) scores; nested masks keep the high scores.
    """

    train: Samples
    test: Samples
    init_base: jax.Array
    bias_base: jax.Array
    mask_scores: jax.Array


def stream_key(seed: jax.Array, name: str) -> jax.Array:
    """The typed key of a seed's named stream."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[name])


def normal(key: jax.Array, shape, dtype) -> jax.Array:
    """Standard normal draws, made in float32 and cast to ``dtype``."""
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def uniform(key: jax.Array, shape, dtype, low=0.0, high=1.0) -> jax.Array:
    """``U(low, high)`` draws, made in float32 and cast to ``dtype``."""
    return jax.random.uniform(key, shape, jnp.float32, low, high).astype(dtype)


def sample_set(key: jax.Array, count: int, static: Static, dtype) -> Samples:
    """Draws ``count`` examples; example i depends only on ``fold_in(key, i)``."""

    def one(i):
        k_label, k_flip, k_noise = jax.random.split(jax.random.fold_in(key, i), 3)
        positive, negative = CLEAN_LABELS
        clean = jnp.where(uniform(k_label, (), jnp.float32) < 0.5, positive, negative)
        clean = clean.astype(dtype)
        flip_draw = uniform(k_flip, (), dtype)
        z = normal(k_noise, (static.d,), dtype)
        if static.noise_orthogonal:
            # z - <z, u> u with u = 1_S / sqrt(s): subtract the mean over the signal support.
            on_support = jnp.arange(static.d) < static.signal_support
            mean = jnp.sum(jnp.where(on_support, z, 0.0)) / static.signal_support
            z = jnp.where(on_support, z - mean, z)
        return Samples(z, clean, flip_draw)

    return jax.vmap(one)(jnp.arange(count, dtype=jnp.uint32))


def filter_rows(key: jax.Array, static: Static, sampler) -> jax.Array:
    """A ``(2, m, d)`` array whose row ``[j, r]`` is ``sampler(fold_in(fold_in(key, j), r), d)``."""

    def row(j, r):
        return sampler(jax.random.fold_in(jax.random.fold_in(key, j), r), (static.d,))

    classes = jnp.arange(2, dtype=jnp.uint32)
    filters = jnp.arange(static.width, dtype=jnp.uint32)
    return jax.vmap(lambda j: jax.vmap(lambda r: row(j, r))(filters))(classes)


def group_data(seed: jax.Array, static: Static) -> GroupData:
    """All the draws a seed fixes, at the bucket's padded sizes."""
    dtype = static.float_dtype
    if static.init == "normal":
        init_sampler = lambda k, shape: normal(k, shape, dtype)
    else:
        init_sampler = lambda k, shape: uniform(k, shape, dtype, -1.0, 1.0)
    bias_key = stream_key(seed, "bias")
    bias_base = jax.vmap(lambda j: uniform(
        jax.random.fold_in(bias_key, j), (static.width,), dtype, -1.0, 1.0))(
            jnp.arange(2, dtype=jnp.uint32))
    return GroupData(
        train=sample_set(stream_key(seed, "train"), static.n, static, dtype),
        test=sample_set(stream_key(seed, "test"), static.n_test, static, dtype),
        init_base=filter_rows(stream_key(seed, "init"), static, init_sampler),
        bias_base=bias_base,
        mask_scores=filter_rows(stream_key(seed, "mask"), static,
                                lambda k, shape: uniform(k, shape, dtype)),
    )


def observed_labels(samples: Samples, label_flip: jax.Array) -> jax.Array:
    """``y = y~``, flipped where the example's flip draw falls below ``label_flip``."""
    return jnp.where(samples.flip_draw < label_flip, -samples.clean, samples.clean)
