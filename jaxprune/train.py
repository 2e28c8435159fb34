"""Batched training: the state of R runs and the jitted multi-step gradient descent.

A chunk's R = S * G runs are laid out as S data groups (one seed each) of G runs: inside a
group the runs share their training set, so the G networks' products with the data become one
large matrix product instead of G small ones.

    L(W) = sum_i w_i softplus(-y_i f(x_i)),   w_i = 1/n for the run's n examples, 0 for padding
    W <- W - eta * (M * grad L(W))              (plain GD; optax momentum / adam likewise)

The loss depends on W only through two linear maps (``loss_factors``): autodiff covers the
elementwise head, the products with the data are written out. Per-run functions (``gradient``,
metrics, optax steps) see one network and ``over_runs`` vmaps them; plain GD is written for the
whole chunk in its matrix-product layout, directly or, where d >> n, in the kernel formulation.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import pkgutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from jaxprune import cpu_update, masks
from jaxprune.data import GroupData, Samples, group_data, observed_labels
from jaxprune.model import (CLASS_SIGN, Context, Network, example_loss, noise_preactivation,
                            patch_logit, signal_share)
from jaxprune.spec import RunParams, Static

__all__ = ["TrainState", "Metrics", "MaskStats", "Factors", "Gram", "make_groups", "init_state",
           "build_gram", "train_steps", "advance", "evaluate", "mask_stats", "optimizer",
           "loss_factors", "gradient", "context", "initial_network"]


class TrainState(NamedTuple):
    """The batched state; every leaf but ``step`` has a leading run axis R.

    Attributes:
      net: the networks (pruned entries exactly 0.0).
      opt_state: the optax state of every run (its learning rate included).
      mask: ``(R, 2, m, d)`` bool, True where a weight is kept.
      diverged: ``(R,)`` bool; a diverged run is frozen.
      step: the number of steps taken, a scalar.
    """

    net: Network
    opt_state: Any
    mask: jax.Array
    diverged: jax.Array
    step: jax.Array


class Metrics(NamedTuple):
    """Per-run measurements, each ``(R,)``."""

    train_loss: jax.Array
    train_error: jax.Array
    test_loss: jax.Array
    test_error: jax.Array
    signal_learning_pos: jax.Array
    signal_learning_neg: jax.Array
    noise_memorization: jax.Array


class MaskStats(NamedTuple):
    """What the masks fix at initialization, per run."""

    realized_fraction: jax.Array  # (R,) pruned share of the run's real weights
    signal_filters_pos: jax.Array  # (R,) filters of class +1 that see the signal support
    signal_filters_neg: jax.Array  # (R,) the same for class -1


# ---------------------------------------------------------------------------------------------
# One run.


def optimizer(static: Static, learning_rate) -> optax.GradientTransformation | None:
    """The optax optimizer of a momentum or adam run, with its learning rate held in its state
    (so it can be swept); None for plain GD, whose update the step applies itself."""
    if static.optimizer == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    if static.optimizer == "momentum":
        return optax.inject_hyperparams(optax.sgd, static_args=("momentum",))(
            learning_rate=learning_rate, momentum=static.momentum)
    return None


def context(p: RunParams, static: Static) -> Context:
    """The run's forward-pass constants; ``a = 1/m`` (mean) or 1 (sum) on real filters only."""
    dtype = static.float_dtype
    scale = 1.0 / p.width.astype(dtype) if static.output_scale == "mean" else 1.0
    weight = jnp.where(jnp.arange(static.width) < p.width, scale, 0.0).astype(dtype)
    return Context(p.signal_norm, p.noise_std, weight)


def sample_weights(count: jax.Array, padded: int, dtype) -> jax.Array:
    """``1/count`` for the first ``count`` examples, 0 for padding."""
    return jnp.where(jnp.arange(padded) < count, 1.0 / count.astype(dtype), 0.0).astype(dtype)


def signal_projection(w: jax.Array, static: Static) -> jax.Array:
    """``<W[j,r], u>`` with ``u = 1_S / sqrt(s)``, computed on the support only: ``(2, m)``."""
    s = static.signal_support
    return jnp.sum(w[..., :s], axis=-1) / jnp.sqrt(jnp.asarray(s, w.dtype))


def noise_projections(w: jax.Array, samples: Samples) -> jax.Array:
    """``<W[j,r], z_i>`` of every example: ``(N, 2, m)``, one example at a time (as the
    forward pass writes it, so that a run's value does not depend on its batch)."""
    return jax.vmap(lambda z: w @ z)(samples.noise)


def outputs(net: Network, ctx: Context, samples: Samples, static: Static,
            noise_proj: jax.Array | None = None) -> jax.Array:
    """``f(x_i)`` for every example of a sample set: ``(N,)``; ``noise_proj`` are the
    examples' ``noise_projections`` when already computed. The noise share is formed one
    example at a time, as ``noise_projections`` are."""
    if noise_proj is None:
        noise_proj = noise_projections(net.w, samples)
    noise = jax.vmap(lambda h: patch_logit(noise_preactivation(h, net.b, ctx), ctx, static))(
        noise_proj)
    return signal_share(signal_projection(net.w, static), net.b, samples.clean, ctx,
                        static) + noise


def outputs_by_filter(net: Network, ctx: Context, samples: Samples, static: Static,
                      noise_proj: jax.Array) -> jax.Array:
    """``outputs`` from the examples' projections laid out by filter, ``(2, m, N)``, the
    noise share formed for all examples at once."""
    b = None if net.b is None else net.b[..., None]
    noise = patch_logit(noise_preactivation(noise_proj, b, ctx), ctx, static)
    return signal_share(signal_projection(net.w, static), net.b, samples.clean, ctx,
                        static) + noise


def init_scale(p: RunParams, static: Static) -> jax.Array:
    """The factor of the standard draws in ``W(0)``: ``init_std`` (normal) or ``1/sqrt(d)``."""
    if static.init == "normal":
        return p.init_std
    return 1.0 / jnp.sqrt(p.d.astype(static.float_dtype))


def initial_network(p: RunParams, g: GroupData, mask: jax.Array, static: Static) -> Network:
    """``W(0) = scale * base * M``: N(0, init_std^2) or U(-1/sqrt(d), 1/sqrt(d)) draws."""
    dtype = static.float_dtype
    w = jnp.where(mask, init_scale(p, static) * g.init_base, 0.0).astype(dtype)
    if not static.bias:
        return Network(w, None)
    real = jnp.arange(static.width) < p.width
    if static.init == "uniform_fan_in":
        b = g.bias_base / jnp.sqrt(p.d.astype(dtype))
    else:
        b = jnp.zeros(g.bias_base.shape, dtype)
    return Network(w, jnp.where(real, b, 0.0).astype(dtype))


def _init_run(p: RunParams, g: GroupData, static: Static):
    mask = masks.prune_mask(g.mask_scores, p.seed, p.fraction, p.d, p.width, static)
    net = initial_network(p, g, mask, static)
    opt = optimizer(static, p.learning_rate)
    return net, (opt.init(net) if opt else ()), mask


class Factors(NamedTuple):
    """The loss of one run and its derivatives in the network's linear maps.

    The loss depends on ``W`` only through ``c = <W, u>`` and ``P = W Z^T``, so
    ``grad_W L = (dL/dP) Z + (dL/dc) u^T`` (see ``gradient``).
    """

    loss: jax.Array  # L, a scalar
    noise: jax.Array  # dL/dP, (2, m, n)
    signal: jax.Array  # dL/dc, (2, m)
    bias: jax.Array | None  # dL/db, (2, m)


def loss_factors(signal_proj: jax.Array, noise_proj: jax.Array, b: jax.Array | None,
                 p: RunParams, samples: Samples, static: Static) -> Factors:
    """``Factors`` of one run from its projections ``c`` ``(2, m)`` and ``P`` ``(2, m, n)``.

    Autodiff covers only the head: the signal share in ``c`` and ``b`` (``(2, m)``, see
    ``model.signal_share``) and the noise share in its pre-activations ``h_n = sigma_p P + b``
    (elementwise, so that ``dL/dP = sigma_p dL/dh_n`` and the bias's part is a sum over the
    examples, written as a matrix-vector product: a reduction over the example axis is a slow
    path of XLA:CPU).
    """
    ctx = context(p, static)
    labels = observed_labels(samples, p.label_flip)
    weights = sample_weights(p.n, static.n, static.float_dtype)

    def loss_of(c, b, h_noise):
        f = signal_share(c, b, samples.clean, ctx, static) + patch_logit(h_noise, ctx, static)
        return jnp.sum(weights * example_loss(labels * f))

    h_noise = noise_preactivation(noise_proj, None if b is None else b[..., None], ctx)
    loss, (d_c, d_b, d_noise) = jax.value_and_grad(loss_of, argnums=(0, 1, 2))(
        signal_proj, b, h_noise)
    if b is not None:
        d_b = d_b + d_noise @ jnp.ones(static.n, d_noise.dtype)
    return Factors(loss, ctx.noise_std * d_noise, d_c, d_b)


def _support_gradient(d_signal: jax.Array, static: Static) -> jax.Array:
    """``dL/dW`` on the signal support: ``dL/dc / sqrt(s)`` on each of the first s columns."""
    return d_signal[..., None] / jnp.sqrt(jnp.asarray(static.signal_support, d_signal.dtype))


def gradient(net: Network, p: RunParams, g: GroupData, static: Static):
    """``(L(W), grad L(W))`` of one run, before masking."""
    noise_proj = jnp.einsum("jmd,nd->jmn", net.w, g.train.noise)
    f = loss_factors(signal_projection(net.w, static), noise_proj, net.b, p, g.train, static)
    on_support = jnp.arange(static.d) < static.signal_support
    grad_w = (jnp.einsum("jmn,nd->jmd", f.noise, g.train.noise)
              + jnp.where(on_support, _support_gradient(f.signal, static), 0.0))
    return f.loss, Network(grad_w, f.bias)


def _optax_step_run(net, opt_state, mask, diverged, p: RunParams, g: GroupData,
                    static: Static):
    """One momentum or adam step of one run; a run whose loss is not finite is frozen and
    marked diverged."""
    opt = optimizer(static, 0.0)  # the learning rate is read from opt_state
    loss, grads = gradient(net, p, g, static)
    grads = grads._replace(w=jnp.where(mask, grads.w, 0.0))
    updates, new_opt_state = opt.update(grads, opt_state, net)
    new_net = optax.apply_updates(net, updates)
    moving = jnp.isfinite(loss) & ~diverged

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(moving, a, b), new, old)

    return keep(new_net, net), keep(new_opt_state, opt_state), diverged | ~jnp.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# Plain GD on a whole chunk, in the layout of its matrix products.
#
# The weights of a group's G runs are one (F x d) matrix, F = G*2m, so the forward product of a
# group is one GEMM with its noise Z (n x d). GD is written for the chunk as a whole:
#     P = W Z^T,  c = <W, u>                                  (per group: one GEMM)
#     W <- M * (W - Dn Z - ds 1_S^T),   Dn = eta dL/dP,  ds = eta dL/dc / sqrt(s)
# with the learning rate folded into the small (F x n) factor Dn.
#
# "direct": with XLA's products a step runs block by block of whole groups (about 1 MiB of W
# each): the block's forward product, loss factors and update back to back, while its W and its
# copy of Z^T are in cache; the update runs in blocks of about 4 MiB of W, so no W-sized
# temporary exists. On the CPU both products are OpenBLAS calls (``cpu_update``) where they
# can be built, since the update's contraction is only n long, where XLA:CPU's dot is slow:
# there one call per step updates W and computes the next step's projections of each block of
# rows while it is in cache, the projections are carried from step to step, and the loss
# factors of all groups are formed at once between the calls.
#
# "kernel" (d >> n): over a segment, W(t) = W(0) - M * (C(t) Z') with Z' = [Z; 1_S] (the noise
# and the signal support's indicator, n + 1 rows) and C = [A, B] the sums of the [Dn, ds], so
# with per-filter Gram matrices K'_f = Z' diag(M_f) Z'^T ((n + 1) x (n + 1))
#     [<W_f(t), z_i>, <W_f(t), 1_S>] = P0'_f - K'_f C_f,     P0' = W(0) Z'^T.
# A step reads the (n + 1)^2 numbers of K'_f per filter instead of multiplying by d columns
# twice (on the CPU the native products read its upper triangle, (n + 1) (n + 2) / 2); the
# support's sums ride along in the one product (with them apart, 3 more small XLA operations
# a step ran the step 1.08-1.19x slower). K' depends only on the masks and the data:
# ``build_gram`` makes it once per chunk (about n / 3 direct steps, one GEMM per group); each
# segment starts with one product P0' and rebuilds W at its end.

#: Bytes of W that one block of the GD update covers (on the CPU of ``benchmarks/RESULTS.md``,
#: 4 MiB ran up to 20 % faster than 1 MiB in 7 of 10 cases, and at most 5 % slower).
BLOCK_BYTES = 1 << 22

#: Bytes of W of one block of groups of a direct step with XLA's products (on the same CPU,
#: with one run per seed, 1 MiB blocks ran 1.1-1.35x faster at d = 1000 than one product over
#: the chunk, and as fast at d = 2000; 4-16 MB blocks 0.9-1.0x; ``benchmarks/RESULTS.md``).
GROUP_BLOCK_BYTES = 1 << 20

#: Bytes of W and examples of one block of runs of an evaluation: its temporaries (the
#: projections of the training and test examples, ``(n + n_test) x 2m`` floats a run, and the
#: block's copy of its slice of the state and data) then stay a fraction of the state (all
#: runs at once, they were 0.4x of it at d = 1000, n_test = 500). Against 16 MiB, 4 MiB took
#: 0.77-1.09x the time and cut the peak over state + data from 1.30x to 1.17x (quickstart,
#: R = 256) and from 1.40x to 1.28x (d = 1000, R = 256); 1 MiB was up to 1.2x slower
#: (``benchmarks/eval_blocks.py``, ``benchmarks/RESULTS.md``, 2026-12-04).
EVAL_BLOCK_BYTES = 1 << 22

#: Bytes of the rows of Z that a column block of a native projection takes where Z has many
#: (``cpu_update.projections``' column blocks: the evaluation's test examples, the Gram
#: build's pairs): half one core's L2 cache, so that a block's rows, packed, stay there while
#: the block's rows of W pass, and a block of runs with many of them is shared among the
#: threads.
COLUMN_BYTES = cpu_update.cache_bytes(2, 1 << 19, 1 << 18, 1 << 23) // 2

#: Bytes of Gram matrices of one block of runs of the kernel formulation with XLA's products on
#: the CPU (where the native ones do not run: ``cpu_update.kernel_steps`` picks its own blocks),
#: which takes a segment's steps a block at a time (``_kernel_loop``): half the last-level cache
#: (4-32 MiB; 16 MiB where it is unknown), so that a block's Gram matrices stay there from step
#: to step. On a 32 MiB L3 (``benchmarks/RESULTS.md``, 2026-12-06, 15:00 UTC), 16 MiB blocks ran
#: 1.2-1.4x (one run per seed) to 1.8-1.9x (one seed) as many run-steps a second as no blocks at
#: the paper's sizes; 8 MiB and 32 MiB less.
KERNEL_BLOCK_BYTES = cpu_update.cache_bytes(3, 32 << 20, 8 << 20, 64 << 20) // 2

#: Block bytes of the GD update and the direct step on an accelerator: no blocks. Blocks are
#: for the CPU's caches; on a GPU each is a kernel launch of its own, and with 1 MiB group
#: blocks R = 4096 seeds at d = 1000 took 2,048 of them a step (4-5 % of the H200's float32
#: peak, ``benchmarks/RESULTS.md``, 2026-12-04). ``plan.run_bytes`` already counts a whole
#: updated copy of the weights. The direct step then runs as ``_unblocked_step``.
UNBLOCKED = 1 << 62


class _DirectCarry(NamedTuple):
    w: jax.Array  # (S, F, d)
    b: jax.Array | None  # (S, G, 2, m)
    diverged: jax.Array  # (S, G)


class _KernelCarry(NamedTuple):
    coef: jax.Array  # (S, F, n + 1): [A, B], the sum of the [Dn, ds]
    b: jax.Array | None  # (S, G, 2, m)
    diverged: jax.Array  # (S, G)


class Gram(NamedTuple):
    """What the kernel formulation reads every step that only the masks and the training noise
    fix, so one chunk's run can build it once: ``(S, F, ...)`` in the GEMM layout."""

    matrices: jax.Array  # K'_f = Z' diag(M_f) Z'^T, Z' = [Z; 1_S]: (S, F, n + 1, n + 1), or
    #                      for the native products upper triangles (S / g, F / L, k, g L),
    #                      k = (n + 1) (n + 2) / 2 (``_gram``)


def _largest_divisor(total: int, at_most: int) -> int:
    return max(k for k in range(1, max(1, min(total, at_most)) + 1) if total % k == 0)


def _run_weight_bytes(static: Static) -> int:
    """Bytes of one run's weights ``(2, m, d)``."""
    return 2 * static.width * static.d * static.float_dtype.itemsize


def _run_blocks(static: Static, block_bytes: int, group_bytes: int = 0) -> tuple[int, int]:
    """``(axis, k)``: blocks of about ``block_bytes`` of W, k runs of the one group (axis 1)
    when S = 1, k whole groups (axis 0) otherwise, each group then counting ``group_bytes``
    more (its examples, where a block holds them)."""
    S, G = static.groups, static.group_size
    if S == 1:
        return 1, _largest_divisor(G, block_bytes // _run_weight_bytes(static))
    return 0, _largest_divisor(S, block_bytes // (G * _run_weight_bytes(static) + group_bytes))


def _blocked_update(w, step_noise, step_support, mask, z, static: Static, block_bytes: int):
    """``where(M, W - step_noise @ Z - [k < s] step_support, 0)``, in blocks, in place."""
    S, G, m, d = static.groups, static.group_size, static.width, static.d
    axis, k = _run_blocks(static, block_bytes)
    size, count = (k * 2 * m, G // k) if axis == 1 else (k, S // k)
    on_support = jnp.arange(d) < static.signal_support

    def block(i, w):
        start = i * size
        cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis)  # noqa: E731
        zb = z if axis == 1 else cut(z)
        new = jnp.where(cut(mask), cut(w) - jnp.einsum("san,snd->sad", cut(step_noise), zb)
                        - jnp.where(on_support, cut(step_support), 0.0), 0.0)
        return jax.lax.dynamic_update_slice_in_dim(w, new, start, axis)

    return block(0, w) if count == 1 else jax.lax.fori_loop(0, count, block, w)


def _xla_projections(w, z):
    """``W Z^T`` of every group, ``(S, F, n)``, with Z transposed first (a copy of a block's
    noise, small: XLA:CPU's batched products ran 20-30 % faster so than with Z transposed
    inside the product, ``benchmarks/RESULTS.md``)."""
    return jnp.einsum("sfd,sdn->sfn", w, jnp.swapaxes(z, 1, 2))


def _support_sum(w: jax.Array, static: Static) -> jax.Array:
    """``<W_f, 1_S>`` of every filter: ``(..., F)``."""
    return jnp.sum(w[..., :static.signal_support], axis=-1)


def _gd_factors(noise_proj, support_sum, carry, params: RunParams, train: Samples,
                static: Static):
    """``(Dn (S, F, n), ds (S, F, 1), new bias, new diverged)`` of one GD step from the
    projections ``W Z^T`` ``(S, F, n)`` and ``<W, 1_S>`` ``(S, F)``; a run whose loss is not
    finite gets zero factors (it is frozen)."""
    S, G, m, n = static.groups, static.group_size, static.width, static.n
    root_s = jnp.sqrt(jnp.asarray(static.signal_support, noise_proj.dtype))
    per_run = lambda c, h, b, p, t: loss_factors(c, h, b, p, t, static)  # noqa: E731
    f = jax.vmap(jax.vmap(per_run, in_axes=(0, 0, 0, 0, None)))(
        (support_sum / root_s).reshape(S, G, 2, m), noise_proj.reshape(S, G, 2, m, n),
        carry.b, params, train)
    finite = jnp.isfinite(f.loss)
    moving = finite & ~carry.diverged

    def scaled(x):
        # A frozen run's factors are exact zeros (a select, so that NaN cannot leak through).
        ok = moving.reshape(moving.shape + (1,) * (x.ndim - 2))
        return jnp.where(ok, params.learning_rate.reshape(ok.shape) * x, 0.0)

    step_noise = scaled(f.noise).reshape(S, G * 2 * m, n)
    step_support = _support_gradient(scaled(f.signal), static).reshape(S, G * 2 * m, 1)
    b = None if carry.b is None else carry.b - scaled(f.bias)
    return step_noise, step_support, b, carry.diverged | ~finite


def _direct_step(carry: _DirectCarry, mask, params, train: Samples, static: Static,
                 block_bytes: int, group_block_bytes: int) -> _DirectCarry:
    """One step with XLA's products, in blocks of k whole groups (about ``group_block_bytes``
    of W)."""
    G = static.group_size
    k = _largest_divisor(static.groups, group_block_bytes // (G * _run_weight_bytes(static)))
    part = dataclasses.replace(static, groups=k)

    def block(i, c: _DirectCarry) -> _DirectCarry:
        cut = lambda a: jax.lax.dynamic_slice_in_dim(a, i * k, k)  # noqa: E731
        put = lambda a, x: jax.lax.dynamic_update_slice_in_dim(a, x, i * k, 0)  # noqa: E731
        w, z = cut(c.w), cut(train.noise)
        mine = _DirectCarry(w, None if c.b is None else cut(c.b), cut(c.diverged))
        noise_proj = _xla_projections(w, z)
        step_noise, step_support, b, diverged = _gd_factors(
            noise_proj, _support_sum(w, part), mine, jax.tree.map(cut, params),
            jax.tree.map(cut, train), part)
        w = _blocked_update(w, step_noise, step_support, cut(mask), z, part, block_bytes)
        return _DirectCarry(put(c.w, w), None if c.b is None else put(c.b, b),
                            put(c.diverged, diverged))

    count = static.groups // k
    return block(0, carry) if count == 1 else jax.lax.fori_loop(0, count, block, carry)


def _support_noise(z: jax.Array, static: Static) -> jax.Array:
    """``Z' = [Z; 1_S]`` ``(S, n + 1, d)``: the noise with the signal support's indicator as
    one more example, so that one product gives both ``W Z^T`` and ``<W, 1_S>`` and one the
    whole step ``Dn Z + ds 1_S^T``."""
    support = (jnp.arange(static.d) < static.signal_support).astype(z.dtype)
    return jnp.concatenate([z, jnp.broadcast_to(support, (z.shape[0], 1, static.d))], axis=1)


def _unblocked_step(carry: _DirectCarry, mask, params, train: Samples, z_support,
                    static: Static) -> _DirectCarry:
    """One direct step as two products over the whole chunk (an accelerator's: no blocks),
    ``P' = W Z'^T`` and ``W <- where(M, W - [Dn, ds] Z', 0)`` with ``Z'`` of
    ``_support_noise``: no separate pass over W for the support's sums and gradient."""
    proj = jnp.einsum("sfd,skd->sfk", carry.w, z_support)
    step_noise, step_support, b, diverged = _gd_factors(proj[..., :-1], proj[..., -1], carry,
                                                        params, train, static)
    factors = jnp.concatenate([step_noise, step_support], axis=-1)
    w = jnp.where(mask, carry.w - jnp.einsum("sfk,skd->sfd", factors, z_support), 0.0)
    return _DirectCarry(w, b, diverged)


def _native_bias(carry, static: Static, dtype) -> jax.Array:
    """The biases ``(S, G, 2, m)`` the native segments read and write: zeros without them."""
    if carry.b is None:
        return jnp.zeros(carry.diverged.shape + (2, static.width), dtype)
    return carry.b


def _native_segment(carry: _DirectCarry, mask, params, train: Samples, num_steps,
                    static: Static, gram: Gram | None = None) -> _DirectCarry:
    """A segment of plain GD as one native call, the loss head included: direct steps
    (``cpu_update.direct_steps``), each thread one run at a time through all the steps while
    the run's weights, mask and noise stay in the caches (with the head in XLA between one
    call a step for all runs, the step ran 1.07-1.21x slower, ``benchmarks/RESULTS.md``); or,
    given the Gram matrices, kernel steps (``cpu_update.kernel_steps``), each thread a block
    of runs from its ``P0'`` to its new W, so that no buffer of the segment spans the chunk
    (with ``P0'`` and ``C`` as XLA's, 125 MB of fresh memory a call at R = 1024)."""
    call, more = ((cpu_update.direct_steps, ()) if gram is None else
                  (cpu_update.kernel_steps, (gram.matrices,)))
    w, b, diverged = call(carry.w, train.noise, mask, _native_bias(carry, static, carry.w.dtype),
                          carry.diverged, _head_inputs(params, train, static), *more, num_steps,
                          power=static.activation_power, support=static.signal_support,
                          bias=carry.b is not None)
    return _DirectCarry(w, None if carry.b is None else b, diverged)


def _packed_gram(static: Static, native: bool | None = None) -> bool:
    """Whether the Gram matrices are kept as their upper triangles, which the native products
    read (half the bytes of the step): where those run (``native``; None: wherever they can,
    ``cpu_update.gram_triangles``) and the CPU is the default backend. Elsewhere they are
    full: XLA's products of full matrices ran 1.7-3.9x faster than of triangles unpacked first
    (``benchmarks/RESULTS.md``)."""
    if native is None:
        return cpu_update.gram_triangles(static.float_dtype)
    return native and jax.default_backend() == "cpu"


def _gram(mask, z, static: Static, block_bytes: int, packed: bool) -> Gram:
    """Gram matrices of ``Z' = [Z; 1_S]`` (``_support_noise``: the support's sums ride along),
    per group ``M (F x d) @ ZZ (d x k)`` with ``ZZ[:, (i, j)] = z'_i * z'_j`` over all
    k = (n + 1)^2 pairs, or the k = (n + 1) (n + 2) / 2 pairs i <= j where ``packed`` (then
    by ``cpu_update.projections``' own kernel, 1.13-1.29x XLA's product at d = 1000, and
    ``cpu_update.interleave``d), in blocks of filters so that no float copy of the whole mask
    exists). Where a group's F filters fill fewer than ``cpu_update.vector_lanes()`` lanes,
    g groups share each set of lanes (the native products read the S F filters in order, a
    set at a time; with 4 lanes instead of 8 they ran 1.5x slower): ``(S / g, F / L, k, g L)``.
    """
    z = _support_noise(z, static)
    n, d = z.shape[1], static.d
    S, F = mask.shape[:2]
    L = cpu_update.lanes(F) if packed else 1  # blocks of whole sets of interleaved filters
    g = math.gcd(S, cpu_update.vector_lanes() // L) if packed else 1  # groups sharing lanes
    rows = L * _largest_divisor(F // L, block_bytes // (L * d * z.dtype.itemsize))
    i, j = cpu_update.pack_upper(n) if packed else np.indices((n, n)).reshape(2, -1)

    def block(m, outer):
        if not packed:
            return jnp.einsum("fd,kd->fk", m.astype(outer.dtype), outer).reshape(-1, n, n)
        k = cpu_update.projections(m.astype(outer.dtype)[None], outer[None], projection="own",
                                   column_bytes=COLUMN_BYTES)[0]
        return cpu_update.interleave(k) if g == 1 else k  # else interleaved with g groups

    def one_group(group):
        z, mask = group
        outer = z[i] * z[j]
        blocks = jax.lax.map(lambda m: block(m, outer), mask.reshape(F // rows, rows, d))
        return blocks.reshape((-1,) + blocks.shape[2:])

    def shared_lanes(groups):  # g groups' triangles (g, F, k), interleaved together
        return cpu_update.interleave(jax.lax.map(one_group, groups).reshape(g * F, -1))

    by_sets = lambda a: a.reshape((S // g, g) + a.shape[1:])  # noqa: E731
    matrices = (jax.lax.map(one_group, (z, mask)) if g == 1
                else jax.lax.map(shared_lanes, (by_sets(z), by_sets(mask))))
    return Gram(matrices)


def _full_gram_products(matrices, a):
    """``K_f A_f`` of all S*F filters from full K_f, as one batched matrix-vector product (as
    a multiply-and-reduce, or with a leading axis of 1, XLA:CPU is 10-50x slower)."""
    n = a.shape[-1]
    return jnp.einsum("fij,fj->fi", matrices.reshape(-1, n, n), a.reshape(-1, n)).reshape(a.shape)


def _unpacked_gram_products(upper, a):
    """``K_f A_f`` by XLA from the interleaved upper triangles of the K_f, unpacked first."""
    i, j = cpu_update.pack_upper(a.shape[-1])
    position = np.zeros((a.shape[-1],) * 2, np.int32)  # of K[i, j] in the triangle
    position[i, j] = position[j, i] = np.arange(len(i))
    return _full_gram_products(cpu_update.deinterleave(upper)[..., position], a)


def _packed(matrices, n: int) -> bool:
    """Whether Gram matrices of n x n are kept as interleaved upper triangles
    ``(S, F / L, k, L)`` rather than full ``(S, F, n, n)`` (at n = 1 with L = 1 the two are
    the same numbers: full)."""
    return matrices.shape[-2:] != (n, n)


def _gram_products(matrices, a):
    """``K_f A_f``, from full K_f ``(S, F, n, n)`` or their interleaved upper triangles
    ``(S, F / L, k, L)``."""
    if not _packed(matrices, a.shape[-1]):
        return _full_gram_products(matrices, a)
    return jax.lax.platform_dependent(matrices, a, cpu=cpu_update.symmetric_products,
                                      default=_unpacked_gram_products)


def _kernel_step(carry: _KernelCarry, gram: Gram, proj0, params, train: Samples,
                 static: Static) -> _KernelCarry:
    """One step from the segment's starting projections ``P0' = W(0) Z'^T``: with
    ``W = W(0) - M * (C Z')``, ``W Z'^T = P0' - K'_f C_f`` per filter (``[W Z^T, <W, 1_S>]``)."""
    proj = proj0 - _gram_products(gram.matrices, carry.coef)
    step_noise, step_support, b, diverged = _gd_factors(
        proj[..., :-1], proj[..., -1], carry, params, train, static)
    return _KernelCarry(carry.coef + jnp.concatenate([step_noise, step_support], axis=-1),
                        b, diverged)


def _gd_loop(state: TrainState, params: RunParams, groups: GroupData, num_steps,
             static: Static, gram: Gram | None = None,
             block_bytes: int = BLOCK_BYTES,
             group_block_bytes: int = GROUP_BLOCK_BYTES,
             native: bool | None = None,
             kernel_block_bytes: int = KERNEL_BLOCK_BYTES) -> TrainState:
    """Plain GD of the chunk; ``native``: the direct step's products and the kernel
    formulation's steps as ``cpu_update`` calls on the CPU (None: wherever they can run). The
    block sizes apply to XLA's steps on the CPU; an accelerator runs unblocked
    (``UNBLOCKED``)."""
    S, G, m, d, n = static.groups, static.group_size, static.width, static.d, static.n
    if native is None:
        native = cpu_update.available(static.float_dtype)
    gemm = lambda a: a.reshape((S, G * 2 * m, d))  # noqa: E731  (free: a row-major reshape)
    by_group = lambda a: a.reshape((S, G) + a.shape[1:])  # noqa: E731
    w, mask, z = gemm(state.net.w), gemm(state.mask), groups.train.noise
    params = jax.tree.map(by_group, params)
    b = None if state.net.b is None else by_group(state.net.b)
    diverged = by_group(state.diverged)
    if static.kernel_step:
        if gram is None:
            gram = _gram(mask, z, static, block_bytes, _packed_gram(static, native))

        def xla_segment(carry, unblocked=False):
            # [W Z^T, <W, 1_S>] without a copy of the noise with the indicator (254 MB for
            # 1024 seeds at the quick sweep's sizes, made every segment).
            proj0 = jnp.concatenate([jnp.einsum("sfd,snd->sfn", carry.w, z),
                                     _support_sum(carry.w, static)[..., None]], axis=-1)
            start = _KernelCarry(jnp.zeros(proj0.shape, proj0.dtype), carry.b,
                                 carry.diverged)
            done = _kernel_loop(start, gram, proj0, params, groups.train, num_steps, static,
                                UNBLOCKED if unblocked else kernel_block_bytes)
            w = _blocked_update(carry.w, done.coef[..., :-1], done.coef[..., -1:], mask, z,
                                static, UNBLOCKED if unblocked else block_bytes)
            return _DirectCarry(w, done.b, done.diverged)

        native_segment = (functools.partial(_native_segment, gram=gram)
                          if native and _packed(gram.matrices, n + 1) else None)
    else:
        def xla_segment(carry, unblocked=False):
            if unblocked:
                z_support = _support_noise(z, static)
                step = lambda c: _unblocked_step(c, mask, params, groups.train,  # noqa: E731
                                                 z_support, static)
            else:
                step = lambda c: _direct_step(c, mask, params, groups.train,  # noqa: E731
                                              static, block_bytes, group_block_bytes)
            return jax.lax.fori_loop(0, num_steps, lambda _, c: step(c), carry)

        native_segment = _native_segment if native else None

    def native_loop(carry):
        # The call gets the state's own W, not the carry's reshape of it: XLA copies a donated
        # buffer that reaches an in-place call through a reshape, free as that is (W out and
        # back every segment, a fresh buffer faulted in each time).
        own = _DirectCarry(state.net.w, state.net.b, state.diverged)
        done = native_segment(own, mask, params, groups.train, num_steps, static)
        return jax.tree.map(lambda a, like: a.reshape(like.shape), done, carry)

    carry = jax.lax.platform_dependent(
        _DirectCarry(w, b, diverged), cpu=native_loop if native_segment else xla_segment,
        default=functools.partial(xla_segment, unblocked=True))
    w = carry.w
    b = None if carry.b is None else carry.b.reshape(state.net.b.shape)
    return state._replace(net=Network(w.reshape(state.net.w.shape), b),
                          diverged=carry.diverged.reshape(-1))


def _kernel_loop(carry: _KernelCarry, gram: Gram, proj0, params, train: Samples, num_steps,
                 static: Static, block_bytes: int) -> _KernelCarry:
    """``num_steps`` kernel steps, a block of runs at a time (about ``block_bytes`` of Gram
    matrices): runs are independent, so a block can take all the segment's steps while its
    Gram matrices stay in the last-level cache, instead of every step reading them all from
    memory."""
    S, G, m = static.groups, static.group_size, static.width
    matrices = gram.matrices
    gram_run_bytes = matrices.size * matrices.dtype.itemsize // (S * G)
    # Blocks of k runs of the group (S = 1) or k groups, of whole rows of ``matrices``: whole
    # sets of interleaved filters. The most that fit, else the fewest.
    if S == 1:
        per_set = 2 * m * G // matrices.shape[1]  # filters a row of `matrices` holds
        axis, total, unit_bytes = 1, G, gram_run_bytes
        whole = lambda k: 2 * m * k % per_set == 0  # noqa: E731
    else:
        per_row = S // matrices.shape[0]  # groups a row of `matrices` holds
        axis, total, unit_bytes = 0, S, G * gram_run_bytes
        whole = lambda k: k % per_row == 0  # noqa: E731
    sizes = [k for k in range(1, total + 1) if total % k == 0 and whole(k)]
    k = max([k for k in sizes if k * unit_bytes <= block_bytes], default=sizes[0])
    unit = ({"runs": k, "filters": 2 * m * k, "sets": 2 * m * k // per_set} if axis == 1
            else {"runs": k, "filters": k, "sets": k // per_row})
    count = (G if axis == 1 else S) // k

    def steps(c, g, proj0, p, t, program):
        return jax.lax.fori_loop(
            0, num_steps, lambda _, x: _kernel_step(x, g, proj0, p, t, program), c)

    if count == 1:
        return steps(carry, gram, proj0, params, train, static)
    part = dataclasses.replace(static, **({"group_size": k} if axis == 1 else {"groups": k}))

    def block(i, c: _KernelCarry) -> _KernelCarry:
        # Each array is cut along ``axis`` by its runs' filters, its runs, or its runs' rows
        # of interleaved triangles; the training set is a group's, cut only with groups.
        cut = lambda kind: lambda a: jax.lax.dynamic_slice_in_dim(  # noqa: E731
            a, i * unit[kind], unit[kind], axis)
        put = lambda kind: lambda whole, x: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
            whole, x, i * unit[kind], axis)
        by_filter, by_run = cut("filters"), lambda tree: jax.tree.map(cut("runs"), tree)
        mine = steps(_KernelCarry(by_filter(c.coef), by_run(c.b), by_run(c.diverged)),
                     Gram(cut("sets")(gram.matrices)), by_filter(proj0), by_run(params),
                     train if axis == 1 else by_run(train), part)
        return _KernelCarry(put("filters")(c.coef, mine.coef),
                            jax.tree.map(put("runs"), c.b, mine.b),
                            put("runs")(c.diverged, mine.diverged))

    return jax.lax.fori_loop(0, count, block, carry)


def _head_inputs(params: RunParams, train: Samples, static: Static) -> tuple[jax.Array, ...]:
    """What ``cpu_update.kernel_steps``'s loss head reads of each run besides its
    projections: (noise_std, signal_norm, learning_rate) ``(S, G, 3)``, observed labels and
    example weights ``(S, G, n)``, clean labels ``(S, n)`` and filter weights ``(S, G, m)``,
    halved for mean pooling (``model.patch_logit``)."""
    dtype = static.float_dtype
    pool = 0.5 if static.patch_pool == "mean" else 1.0

    def run(p: RunParams, t: Samples):
        ctx = context(p, static)
        constants = jnp.stack([ctx.noise_std, ctx.signal_norm, p.learning_rate]).astype(dtype)
        return (constants, observed_labels(t, p.label_flip), sample_weights(p.n, static.n, dtype),
                pool * ctx.filter_weight)

    constants, labels, weights, filter_weight = jax.vmap(jax.vmap(run, in_axes=(0, None)))(
        params, train)
    return constants, labels, weights, train.clean, filter_weight


def _optax_loop(state: TrainState, params: RunParams, groups: GroupData, num_steps,
                static: Static) -> TrainState:
    step = over_runs(
        lambda net, o, m, dv, p, group: _optax_step_run(net, o, m, dv, p, group, static),
        static)

    # Only what changes is carried; the mask and data are loop constants.
    def body(_, carry):
        return step(*carry[:2], state.mask, carry[2], params, groups)

    net, opt_state, diverged = jax.lax.fori_loop(
        0, num_steps, body, (state.net, state.opt_state, state.diverged))
    return state._replace(net=net, opt_state=opt_state, diverged=diverged)


def _initial_projections(mask, params: RunParams, groups: GroupData, static: Static,
                         block_bytes: int = BLOCK_BYTES) -> jax.Array:
    """``<W(0)[j,r], z_i>`` of every run's training examples, ``(R, n, 2, m)``, with
    ``W(0) = scale * where(M, base, 0)`` formed in blocks of runs (no W-sized copy)."""
    S, G, m, n, d = static.groups, static.group_size, static.width, static.n, static.d
    axis, k = _run_blocks(static, block_bytes)
    mask = mask.reshape(S, G, 2, m, d)

    def block(mask, base, z):  # (s, g, 2, m, d), (s, 2, m, d), (s, n, d)
        kept = jnp.where(mask, base[:, None], 0.0)
        return jnp.einsum("sgjmd,snd->sgnjm", kept, z)

    base, z = groups.init_base, groups.train.noise
    cut = lambda a, i: jax.lax.dynamic_slice_in_dim(a, i * k, k, axis)  # noqa: E731
    if axis == 1:
        one = lambda i: block(cut(mask, i), base, z)  # noqa: E731
    else:
        one = lambda i: block(cut(mask, i), cut(base, i), cut(z, i))  # noqa: E731
    proj = jax.lax.fori_loop(
        0, (G if axis == 1 else S) // k,
        lambda i, out: jax.lax.dynamic_update_slice_in_dim(out, one(i), i * k, axis),
        jnp.zeros((S, G, n, 2, m), static.float_dtype))
    scale = init_scale(params, static).astype(static.float_dtype)
    return scale[:, None, None, None] * proj.reshape(S * G, n, 2, m)


def _metrics_run(net: Network, mask, initial_proj, p: RunParams, g: GroupData,
                 static: Static, test_proj=None, train_proj=None):
    """Metrics of one run; ``initial_proj`` is ``<W(0)[j,r], z_i>`` of its training examples
    ``(n, 2, m)`` (see ``_initial_projections``); where given, ``test_proj`` are those of W
    and the test examples, ``(2, m, n_test)``, and ``train_proj`` of W and the training
    examples, ``(n, 2, m)``."""
    dtype = static.float_dtype
    ctx = context(p, static)
    real_filter = jnp.arange(static.width) < p.width

    def loss_and_error(samples, count, padded, out):
        labels = observed_labels(samples, p.label_flip)
        weights = sample_weights(count, padded, dtype)
        margin = labels * out
        # A non-finite margin counts as an error. Errors are counted, then divided once, so
        # that the rate is k/n correctly rounded (a float32 sum of 1/n weights reached
        # 1.0000002).
        wrong = jnp.where((weights > 0) & ~(margin > 0), 1.0, 0.0).astype(dtype)
        error = jnp.sum(wrong) / count.astype(dtype)
        return jnp.sum(weights * example_loss(margin)), error, labels, weights

    if train_proj is None:
        train_proj = noise_projections(net.w, g.train)
    train_loss, train_error, labels, weights = loss_and_error(
        g.train, p.n, static.n, outputs(net, ctx, g.train, static, train_proj))
    test_out = (outputs(net, ctx, g.test, static) if test_proj is None else
                outputs_by_filter(net, ctx, g.test, static, test_proj))
    test_loss, test_error, _, _ = loss_and_error(g.test, p.n_test, static.n_test, test_out)

    # The feature measures are linear in W - W(0), so they are differences of projections;
    # W(0) is formed on the signal support only (no W-sized copy).
    s = static.signal_support
    support0 = initial_network(p, g._replace(init_base=g.init_base[..., :s]), mask[..., :s],
                               static).w
    # Signal learning: max_r j <dW[j,r], mu> per class j.
    learned = jnp.asarray(CLASS_SIGN, dtype)[:, None] * p.signal_norm * (
        signal_projection(net.w, static) - signal_projection(support0, static))
    learned = jnp.max(jnp.where(real_filter, learned, -jnp.inf), axis=-1)
    # A class none of whose filters keeps the signal learns exactly 0, not the -0.0 of its sign.
    learned = jnp.where(learned == 0, 0.0, learned)
    # Noise memorization: mean_i max_r <dW[y_i,r], xi_i>.
    proj = p.noise_std * (train_proj - initial_proj)
    own = jnp.where(labels[:, None] > 0, proj[:, 0, :], proj[:, 1, :])
    memorized = jnp.sum(weights * jnp.max(jnp.where(real_filter, own, -jnp.inf), axis=-1))
    return Metrics(train_loss, train_error, test_loss, test_error, learned[0], learned[1],
                   memorized)


def _mask_stats_run(mask, p: RunParams, static: Static):
    dtype = static.float_dtype
    total = (2 * p.width * p.d).astype(dtype)
    kept = jnp.sum(mask, dtype=jnp.int32).astype(dtype)
    per_class = masks.signal_filters(mask, static)
    return MaskStats(1.0 - kept / total, per_class[0], per_class[1])


# ---------------------------------------------------------------------------------------------
# R runs: S data groups of G runs.


def over_runs(fn, static: Static):
    """Maps ``fn(*run_args, group)`` over R = S * G runs; run args have a leading R axis,
    ``group`` a leading S axis, results a leading R axis."""
    S, G = static.groups, static.group_size

    def batched(*args):
        *run_args, group = args
        split = jax.tree.map(lambda a: a.reshape((S, G) + a.shape[1:]), run_args)
        inner = jax.vmap(lambda *a: fn(*a[:-1], group=a[-1]),
                         in_axes=(0,) * len(run_args) + (None,))
        out = jax.vmap(inner)(*split, group)
        return jax.tree.map(lambda a: a.reshape((S * G,) + a.shape[2:]), out)

    return batched


def _static_precision(fn):
    """``fn`` with its float32 matrix products at the precision its ``static`` argument names
    (``Static.matmul_precision``; ``static`` passed by keyword or by position, or bound by
    ``functools.partial``).

    "float32" (the default) computes them in true float32 on every backend (HIGHEST): XLA's
    own default is TF32 on recent NVIDIA GPUs and bfloat16 passes on TPUs (inputs rounded to
    10 or 8 bits of mantissa, not 23), which would make a sweep's numbers depend on where it
    ran. "tensorfloat32" asks for HIGH: TF32 on NVIDIA GPUs since Ampere (faster, coarser, and
    the numbers then depend on the machine), three bfloat16 passes on TPUs, true float32 on
    the CPU. Float64 products are computed in float64 either way."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with jax.default_matmul_precision(bound.arguments["static"].matmul_precision):
            return fn(*args, **kwargs)

    return wrapped


@functools.partial(jax.jit, static_argnames="static")
@_static_precision
def make_groups(seeds: jax.Array, static: Static) -> GroupData:
    """The data and draws of each of the S seeds, ``(S, ...)``, made a few seeds at a time
    (about ``BLOCK_BYTES`` each): the random draws' temporaries then stay small (vmapped over
    all seeds at once, 1.5x the data; ``benchmarks/RESULTS.md``)."""
    cpu_update.prepare_cpu()  # before this program is lowered: the native threefry hash
    one = lambda s: group_data(s, static)  # noqa: E731
    group = jax.eval_shape(one, seeds[0])
    group_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(group))
    return jax.lax.map(one, seeds, batch_size=max(1, BLOCK_BYTES // group_bytes))


@functools.partial(jax.jit, static_argnames="static")
@_static_precision
def init_state(params: RunParams, groups: GroupData, static: Static) -> TrainState:
    """Masks, initial networks and optimizer states of the R runs."""
    init = over_runs(lambda p, group: _init_run(p, group, static), static)
    net, opt_state, mask = init(params, groups)
    return TrainState(net, opt_state, mask, jnp.zeros(static.runs, bool),
                      jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames="static")
@_static_precision
def mask_stats(state: TrainState, params: RunParams, static: Static) -> MaskStats:
    """Realized pruning fraction and signal-carrying filters of every run."""
    return jax.vmap(lambda m, p: _mask_stats_run(m, p, static))(state.mask, params)


#: Top-level modules of JAX's GPU and TPU plugins.
ACCELERATOR_PLUGINS = ("jax_cuda", "jax_rocm", "libtpu")


def _compiler_options() -> dict[str, str]:
    """XLA options of the step programs: XLA:CPU without its YNNPACK fusions.

    With XLA's own loop emitters and dots the direct step ran as fast (within 7 %) with one
    seed per chunk, and up to 2.8x faster with one seed per run, than with YNNPACK's fusions
    on the 2-core CPU of ``benchmarks/RESULTS.md``. The option exists from jaxlib 0.9 on (an
    unknown option is an error). It is left out where an accelerator plugin is installed:
    the programs then run on the accelerator, and deciding this here must not start a backend.
    """
    version = tuple(int(part) for part in jaxlib.__version__.split(".")[:2])
    accelerator = any(name.startswith(ACCELERATOR_PLUGINS)
                      for _, name, _ in pkgutil.iter_modules())
    if version < (0, 9) or accelerator:
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": ""}


#: Decided once, at import (see ``_compiler_options``).
COMPILER_OPTIONS = _compiler_options()


def _native_evaluation_products(static: Static) -> bool:
    """Whether the evaluation forms the projections of W and W(0) with the training and test
    examples by the own kernel of ``cpu_update`` (where it runs: the CPU is the default
    backend, float32, AVX-512 or AVX2; the evaluation then ran 1.10-1.16x at d = 1000,
    ``benchmarks/RESULTS.md``). Its entries have the same bits whatever rows share a call, so
    a run's metrics still do not depend on its batch; sgemm's do, and elsewhere XLA forms them
    one example at a time."""
    return (jax.default_backend() == "cpu" and cpu_update.available(static.float_dtype)
            and cpu_update.own_projection())


def _evaluate(state: TrainState, params: RunParams, groups: GroupData, static: Static,
              block_bytes: int = EVAL_BLOCK_BYTES, native: bool | None = None) -> Metrics:
    """Every run's metrics, in blocks of runs of about ``block_bytes`` of W and examples
    (``_run_blocks``: each block is a contiguous slice of the run axis); ``native``: the
    projections of W and W(0) with the examples by ``cpu_update.projections`` (None:
    ``_native_evaluation_products``)."""
    examples = (static.n + static.n_test) * static.d * static.float_dtype.itemsize
    axis, k = _run_blocks(static, block_bytes, group_bytes=examples)
    part = dataclasses.replace(static, **({"group_size": k} if axis == 1 else {"groups": k}))
    runs = part.groups * part.group_size
    if native is None:
        native = _native_evaluation_products(static)

    def projections(w, noise, first_group, **blocks):  # (runs, 2, m, d) -> (runs, 2, m, N)
        filters = part.group_size * 2 * static.width
        proj = cpu_update.projections(w.reshape(part.groups, filters, static.d), noise,
                                      projection="own", first_group=first_group, **blocks)
        return proj.reshape(w.shape[:-1] + noise.shape[1:2])

    def block(i):
        # Slices inside the loop, not lax.map over arrays reshaped to (blocks, k, ...): with
        # k = 1, XLA:CPU laid that reshape out with the unit axis major and copied every
        # argument, state and data, to feed the loop.
        cut = lambda size: lambda a: jax.lax.dynamic_slice_in_dim(a, i * size, size)  # noqa: E731
        net, mask, p = jax.tree.map(cut(runs), (state.net, state.mask, params))
        group = groups if axis == 1 else jax.tree.map(cut(k), groups)
        if native:
            first = 0 if axis == 1 else i * k
            by_example = lambda proj: jnp.moveaxis(proj, -1, 1)  # noqa: E731  (runs, N, 2, m)
            base = group.init_base[:, None].repeat(part.group_size, 1).reshape(net.w.shape)
            kept = jnp.where(mask, base, 0.0).astype(net.w.dtype)
            scale = init_scale(p, part).astype(net.w.dtype)
            initial_proj = scale[:, None, None, None] * by_example(
                projections(kept, groups.train.noise, first))
            train_proj = by_example(projections(net.w, groups.train.noise, first))
            test_proj = projections(net.w, groups.test.noise, first,
                                    column_bytes=COLUMN_BYTES)
        else:
            initial_proj, train_proj, test_proj = (
                _initial_projections(mask, p, group, part), None, None)
        metrics = over_runs(lambda net, m, p0, p, tp, trp, group: _metrics_run(
            net, m, p0, p, group, part, tp, trp), part)
        return metrics(net, mask, initial_proj, p, test_proj, train_proj, group)

    out = jax.lax.map(block, jnp.arange(static.groups * static.group_size // runs))
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


@functools.partial(jax.jit, static_argnames="static", compiler_options=COMPILER_OPTIONS)
@_static_precision
def evaluate(state: TrainState, params: RunParams, groups: GroupData,
             static: Static) -> Metrics:
    """Every run's metrics at the current step."""
    return _evaluate(state, params, groups, static)


@functools.partial(jax.jit, static_argnames="static", compiler_options=COMPILER_OPTIONS)
@_static_precision
def build_gram(mask: jax.Array, groups: GroupData, static: Static) -> Gram | None:
    """The kernel formulation's per-filter Gram matrices of a chunk, from its masks
    ``(R, 2, m, d)``; None where plain GD runs directly (or the optimizer is not GD). Pass
    them to every ``advance`` of the chunk so that no segment builds them again."""
    if not static.kernel_step:
        return None
    S, G, m, d = static.groups, static.group_size, static.width, static.d
    return _gram(mask.reshape(S, G * 2 * m, d), groups.train.noise, static, BLOCK_BYTES,
                 _packed_gram(static))


def _train_steps(state: TrainState, params: RunParams, groups: GroupData, num_steps,
                 static: Static, gram: Gram | None) -> TrainState:
    if static.optimizer == "gd":
        state = _gd_loop(state, params, groups, num_steps, static, gram)
    else:
        state = _optax_loop(state, params, groups, num_steps, static)
    return state._replace(step=state.step + num_steps)


@functools.partial(jax.jit, static_argnames="static", donate_argnums=0,
                   compiler_options=COMPILER_OPTIONS)
@_static_precision
def train_steps(state: TrainState, params: RunParams, groups: GroupData, num_steps: jax.Array,
                static: Static, gram: Gram | None = None) -> TrainState:
    """``num_steps`` training steps of every run (one ``fori_loop``; ``num_steps`` is traced,
    so segments of any length share one program). ``gram``: the chunk's ``build_gram``,
    built here when not given."""
    return _train_steps(state, params, groups, num_steps, static, gram)


@functools.partial(jax.jit, static_argnames="static", donate_argnums=0,
                   compiler_options=COMPILER_OPTIONS)
@_static_precision
def advance(state: TrainState, params: RunParams, groups: GroupData, num_steps: jax.Array,
            static: Static, gram: Gram | None = None) -> tuple[TrainState, Metrics]:
    """``train_steps``, then every run's metrics; a run whose loss is now non-finite is marked
    diverged (its next step would have frozen it; this catches the last step's)."""
    state = _train_steps(state, params, groups, num_steps, static, gram)
    metrics = _evaluate(state, params, groups, static)
    return state._replace(diverged=state.diverged | ~jnp.isfinite(metrics.train_loss)), metrics
