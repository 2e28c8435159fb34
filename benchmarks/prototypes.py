"""Prototypes of faster formulations of the training step, checked against ``train.advance``.

Not used by the engine: these are candidates to integrate into ``jaxprune/train.py``. Each
prototype runs the same gradient-descent steps as ``train.advance``'s ``fori_loop`` (plain GD,
no bias, integer ``activation_power``, either ``output_scale`` and ``patch_pool``, any
``signal_support``; the evaluation at the end of ``advance`` is not part of the step) and must
give the same weights to float tolerance: ``python benchmarks/prototypes.py --check``.

The formulation ("closed form", ``closed_form_advance``), per seed group s with shared
standardized noise ``Z_s (n x d)``, weights of its G runs stacked as ``W_s (G*2m x d)``::

    Hn   = sigma_p * (W_s @ Z_s^T)                       one GEMM (G*2m x d x n)
    hs   = c_i |mu| <W[j,r], u>                          (only the s support coordinates)
    f_i  = sum_{j,r} s_j a_r pool (act(hs) + act(Hn)),  margin = y f
    g_i  = -w_i y_i sigmoid(-margin_i)                   closed-form dL/df
    Dn   = (lr * moving * sigma_p) s_j a_r pool act'(Hn) g_i         (G*2m x n)
    W_s <- where(M, W_s - Dn @ Z_s - [k < s] lr |mu| u_k sum_i ..., 0)   one GEMM + one fusion

What differs from ``advance`` (autodiff of the per-example model, vmapped twice):

1. The gradient is written in closed form: no transposes of ``(R, n, 2, m)`` intermediates,
   no padded ``add_any`` of the signal-coordinate gradient over all ``d`` coordinates.
2. The learning rate (and ``moving``, and ``sigma_p``) is folded into the small ``(G*2m x n)``
   factor before the gradient GEMM, so the update is a single fusion
   ``where(M, W - GEMM, 0)`` reading W, the GEMM output and the mask once.
3. The state is kept in the GEMM layout ``(S, G*2m, d)`` for the whole loop.
4. Diverged runs: ``moving = isfinite(loss) & ~diverged`` zeroes their factor (and a select
   guards against a non-finite factor), so they are frozen exactly as in ``advance``.

Variants (``variant`` argument):
  ``closed``     the above, dot_generals as written (``einsum``);
  ``blocked``    the gradient GEMM and the update done block by block (a ``fori_loop`` over
                 blocks of about ``BLOCK_BYTES`` of W: rows of the one group when S = 1, whole
                 groups otherwise), updating W in place with ``dynamic_update_slice``: no
                 W-sized gradient temporary, and each block's gradient is consumed from cache.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import train  # noqa: E402
from jaxprune.data import observed_labels  # noqa: E402

VARIANTS = ("closed", "blocked")
#: Bytes of W one block of the ``blocked`` variant updates (about the L2 cache).
BLOCK_BYTES = 1 << 20


class Consts(NamedTuple):
    """Per-group and per-run constants of the closed-form step (layout S x G)."""

    z: jax.Array  # (S, n, d) standardized training noise
    clean: jax.Array  # (S, 1, n) clean labels
    y: jax.Array  # (S, G, n) observed labels
    weight: jax.Array  # (S, G, n) 1/n_run on real examples, 0 on padding
    coef: jax.Array  # (S, G, 2, m, 1): s_j a_r pool
    noise_std: jax.Array  # (S, G, 1, 1, 1)
    signal: jax.Array  # (S, G, 1, 1, 1): |mu| / sqrt(s)
    lr: jax.Array  # (S, G, 1, 1, 1)
    mask: jax.Array  # (S, G*2m, d) bool


class Carry(NamedTuple):
    w: jax.Array  # (S, G*2m, d)
    diverged: jax.Array  # (S, G)


@functools.partial(jax.jit, static_argnames="static")
def prepare(state: train.TrainState, params, groups, static) -> tuple[Carry, Consts]:
    """The closed-form layout of a chunk's state (no copy of W beyond a reshape)."""
    S, G, m, d, n = static.groups, static.group_size, static.width, static.d, static.n
    dtype = static.float_dtype
    sg = lambda a: a.reshape(S, G)  # noqa: E731
    y = jax.vmap(lambda samples, flips: jax.vmap(lambda f: observed_labels(samples, f))(flips))(
        groups.train, sg(params.label_flip))
    weight = jax.vmap(lambda c: train.sample_weights(c, n, dtype))(params.n).reshape(S, G, n)
    scale = (1.0 / params.width.astype(dtype)) if static.output_scale == "mean" else jnp.ones(
        params.width.shape, dtype)
    a = jnp.where(jnp.arange(m)[None, :] < params.width[:, None], scale[:, None], 0.0)
    pool = 0.5 if static.patch_pool == "mean" else 1.0
    sign = jnp.asarray([1.0, -1.0], dtype)
    coef = (sign[None, :, None] * a[:, None, :] * pool).astype(dtype).reshape(S, G, 2, m, 1)
    col = lambda v: v.astype(dtype).reshape(S, G, 1, 1, 1)  # noqa: E731
    consts = Consts(
        z=groups.train.noise,
        clean=groups.train.clean.reshape(S, 1, n), y=y, weight=weight, coef=coef,
        noise_std=col(params.noise_std),
        signal=col(params.signal_norm) / jnp.sqrt(jnp.asarray(static.signal_support, dtype)),
        lr=col(params.learning_rate), mask=state.mask.reshape(S, G * 2 * m, d))
    return Carry(state.net.w.reshape(S, G * 2 * m, d), state.diverged.reshape(S, G)), consts


def _act(h, q):
    r = jnp.maximum(h, 0.0)
    return r if q == 1 else jax.lax.integer_pow(r, q)


def _dact(h, q):
    if q == 1:
        return (h > 0).astype(h.dtype)
    r = jnp.maximum(h, 0.0)
    return q * (r if q == 2 else jax.lax.integer_pow(r, q - 1))


def closed_form_step(carry: Carry, c: Consts, static, variant: str = "closed") -> Carry:
    """One GD step of every run, closed-form gradient (see the module docstring)."""
    d, s = static.d, static.signal_support
    w = carry.w
    hz = jnp.einsum("sad,snd->san", w, c.z)
    proj = jnp.sum(w[..., :s], axis=-1)
    dn, ds, diverged = _factors(hz, proj, carry.diverged, c, static)
    on_support = (jnp.arange(d) < s)[None, None, :]
    if variant == "blocked":
        new_w = _blocked_update(w, dn, ds, c, static, on_support)
    else:
        upd = jnp.einsum("san,snd->sad", dn, c.z)
        new_w = jnp.where(c.mask, w - upd - jnp.where(on_support, ds, 0.0), 0.0)
    return Carry(new_w, diverged)


def _largest_divisor(total: int, at_most: int) -> int:
    return max(k for k in range(1, max(1, min(total, at_most)) + 1) if total % k == 0)


def _blocked_update(w, dn, ds, c: Consts, static, on_support):
    """``where(M, W - Dn @ Z - signal part, 0)`` block by block, in place."""
    S, G, m, d = static.groups, static.group_size, static.width, static.d
    row_bytes = d * w.dtype.itemsize
    if S == 1:  # blocks of whole runs within the one group
        runs = _largest_divisor(G, BLOCK_BYTES // (2 * m * row_bytes))
        size, axis, count = runs * 2 * m, 1, G // runs
    else:  # blocks of whole groups
        groups = _largest_divisor(S, BLOCK_BYTES // (G * 2 * m * row_bytes))
        size, axis, count = groups, 0, S // groups

    def body(i, w):
        start = i * size
        cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis)  # noqa: E731
        z = c.z if axis == 1 else cut(c.z)
        upd = jnp.einsum("san,snd->sad", cut(dn), z)
        new = jnp.where(cut(c.mask), cut(w) - upd - jnp.where(on_support, cut(ds), 0.0), 0.0)
        return jax.lax.dynamic_update_slice_in_dim(w, new, start, axis)

    return jax.lax.fori_loop(0, count, body, w)


@functools.partial(jax.jit, static_argnames=("static", "variant"), donate_argnums=0)
def closed_form_advance(carry: Carry, consts: Consts, num_steps, static,
                        variant: str = "closed") -> Carry:
    """``num_steps`` closed-form GD steps of every run (one ``fori_loop``)."""
    return jax.lax.fori_loop(0, num_steps,
                             lambda _, cr: closed_form_step(cr, consts, static, variant), carry)


def weights(carry: Carry, static) -> np.ndarray:
    """``(R, 2, m, d)``."""
    return np.asarray(carry.w).reshape(static.runs, 2, static.width, static.d)


# ---------------------------------------------------------------------------------------------
# The pipelined formulation: one pass over W per step.
#
# The carry holds, besides W, the products the next step needs: HZ = W @ Z^T (G*2m x n) and
# P = sum_{k<s} W[:, k]. A step computes the small (G*2m x n) factors from them, then walks
# over W block by block: gradient GEMM, update, and the next step's forward GEMM of the updated
# block while it is still in cache. W is read and written once per step; there is no W-sized
# temporary. Same numbers as the closed form (the products are only split differently).


class PCarry(NamedTuple):
    w: jax.Array  # (S, F, d)
    hz: jax.Array  # (S, F, n): <W_f, z_i>
    proj: jax.Array  # (S, F): sum_{k<s} W_f[k]
    diverged: jax.Array  # (S, G)


@functools.partial(jax.jit, static_argnames="static")
def pipelined_prepare(state, params, groups, static) -> tuple[PCarry, Consts]:
    carry, consts = prepare(state, params, groups, static)
    hz = jnp.einsum("sfd,snd->sfn", carry.w, consts.z)
    proj = jnp.sum(carry.w[..., :static.signal_support], axis=-1)
    return PCarry(carry.w, hz, proj, carry.diverged), consts


def _factors(hz, proj, diverged, c: Consts, static):
    """The small per-step factors (as in ``closed_form_step``) from the carried products."""
    S, G, m, n = static.groups, static.group_size, static.width, static.n
    q = int(static.activation_power)
    hn = hz.reshape(S, G, 2, m, n) * c.noise_std
    hs = c.signal * proj.reshape(S, G, 2, m, 1) * c.clean[:, :, None, None, :]
    f = jnp.sum((_act(hn, q) + _act(hs, q)) * c.coef, axis=(2, 3))
    margin = c.y * f
    loss = jnp.sum(c.weight * jax.nn.softplus(-margin), axis=-1)
    finite = jnp.isfinite(loss)
    moving = finite & ~diverged
    g = -c.weight * c.y * jax.nn.sigmoid(-margin)
    dpool = c.coef * g[:, :, None, None, :]
    step = jnp.where(moving, 1.0, 0.0).astype(hz.dtype).reshape(S, G, 1, 1, 1) * c.lr
    keep = moving[:, :, None, None, None]
    dn = jnp.where(keep, dpool * _dact(hn, q) * (step * c.noise_std), 0.0)
    # The signal-coordinate sum over examples as a matrix-vector product: a reduction over
    # the example axis is a slow path of XLA:CPU's default (YNNPACK) fusions.
    ds = jnp.einsum("sgjmn,sn->sgjm", dpool * _dact(hs, q), c.clean[:, 0, :])[..., None]
    ds = jnp.where(keep, ds * (step * c.signal), 0.0)
    F = hz.shape[1]
    return dn.reshape(S, F, n), ds.reshape(S, F, 1), diverged | ~finite


def pipelined_step(carry: PCarry, c: Consts, static) -> PCarry:
    S, G, m, d = static.groups, static.group_size, static.width, static.d
    s = static.signal_support
    dn, ds, diverged = _factors(carry.hz, carry.proj, carry.diverged, c, static)
    on_support = (jnp.arange(d) < s)[None, None, :]
    row_bytes = d * carry.w.dtype.itemsize
    w, hz, proj, mask = carry.w, carry.hz, carry.proj, c.mask
    if S == 1:
        # Blocks of whole runs of the one group. The leading axis of 1 is dropped: sliced
        # along axis 1, XLA:CPU does not update the loop carry in place (50x slower).
        runs = _largest_divisor(G, BLOCK_BYTES // (2 * m * row_bytes))
        size, count = runs * 2 * m, G // runs
        w, hz, proj, mask, dn, ds = (a[0] for a in (w, hz, proj, mask, dn, ds))
        z, on_support = c.z[0], on_support[0]
        fwd, bwd = "ad,nd->an", "an,nd->ad"
    else:  # blocks of whole groups
        groups = _largest_divisor(S, BLOCK_BYTES // (G * 2 * m * row_bytes))
        size, count = groups, S // groups
        z = c.z
        fwd, bwd = "sad,snd->san", "san,snd->sad"

    def body(i, cr):
        w, hz, proj = cr
        start = i * size
        cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, 0)  # noqa: E731
        put = lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, start, 0)  # noqa: E731
        zb = z if S == 1 else cut(z)
        upd = jnp.einsum(bwd, cut(dn), zb)
        new = jnp.where(cut(mask), cut(w) - upd - jnp.where(on_support, cut(ds), 0.0), 0.0)
        return (put(w, new), put(hz, jnp.einsum(fwd, new, zb)),
                put(proj, jnp.sum(new[..., :s], axis=-1)))

    w, hz, proj = jax.lax.fori_loop(0, count, body, (w, hz, proj))
    if S == 1:
        w, hz, proj = w[None], hz[None], proj[None]
    return PCarry(w, hz, proj, diverged)


@functools.partial(jax.jit, static_argnames="static", donate_argnums=0)
def pipelined_advance(carry: PCarry, consts: Consts, num_steps, static) -> PCarry:
    return jax.lax.fori_loop(0, num_steps, lambda _, cr: pipelined_step(cr, consts, static),
                             carry)


# ---------------------------------------------------------------------------------------------
# The kernel formulation: the weights are never materialised during training.
#
# Every update of a run is M * (Dn @ Z + ds 1_S^T) with Z its group's shared noise, so
#     W(t) = W(0) - M * (A(t) @ Z + b(t) 1_S^T),   A = sum of the Dn (2m x n), b = sum of ds,
# and the forward pass needs only, per filter f = (j, r),
#     <W_f(t), z_i> = H0[f, i] - sum_l A[f, l] K_f[l, i] - b_f v_f[i]
#     K_f = Z diag(M_f) Z^T (n x n),  v_f[i] = sum_{k < s} M_f[k] z_i[k],
#     <W_f(t), 1_S> = P0[f] - sum_l A[f, l] v_f[l] - b_f c_f,  c_f = sum_{k < s} M_f[k].
# K of a whole group is one GEMM, K_flat (G*2m x n^2) = M (G*2m x d) @ ZZ (d x n^2) with
# ZZ[k] = z[:, k] z[:, k]^T, computed once per chunk (2 G 2m d n^2 FLOPs, the cost of
# n/4 ... d/4 steps). A step then reads K once: 2 * 2m * n^2 FLOPs per run-step instead of
# 8 m n d, memory bound; it wins where d / n exceeds the machine's FLOP-per-byte ratio
# (the quick sweep: d / n = 40), and costs 2m n^2 floats per run instead of 2m d.


class KConsts(NamedTuple):
    k: jax.Array  # (S, F, n, n) with F = G*2m
    h0: jax.Array  # (S, F, n) <W0_f, z_i>
    p0: jax.Array  # (S, F) sum_{k<s} W0_f[k]
    v: jax.Array  # (S, F, n)
    c: jax.Array  # (S, F)
    base: Consts  # the closed-form constants (labels, weights, coefficients, rates)


class KCarry(NamedTuple):
    a: jax.Array  # (S, F, n)
    b: jax.Array  # (S, F)
    diverged: jax.Array  # (S, G)


@functools.partial(jax.jit, static_argnames="static")
def kernel_prepare(state: train.TrainState, params, groups, static) -> tuple[KCarry, KConsts]:
    """The kernel-formulation constants of a chunk (the Gram matrices: one GEMM per group)."""
    carry, base = prepare(state, params, groups, static)
    S, n, s = static.groups, static.n, static.signal_support
    w0, maskf = carry.w, base.mask.astype(carry.w.dtype)

    def gram(args):
        z, m = args  # (n, d), (F, d)
        zz = (z[:, None, :] * z[None, :, :]).reshape(n * n, -1)  # (n^2, d)
        return (m @ zz.T).reshape(m.shape[0], n, n)

    k = jax.lax.map(gram, (base.z, maskf))
    h0 = jnp.einsum("sfd,snd->sfn", w0, base.z)
    p0 = jnp.sum(w0[..., :s], axis=-1)
    v = jnp.einsum("sfd,snd->sfn", maskf[..., :s], base.z[..., :s])
    c = jnp.sum(maskf[..., :s], axis=-1)
    f = w0.shape[1]
    zero = jnp.zeros((S, f, n), w0.dtype)
    return (KCarry(zero, jnp.zeros((S, f), w0.dtype), carry.diverged),
            KConsts(k, h0, p0, v, c, base))


def kernel_step(carry: KCarry, kc: KConsts, static) -> KCarry:
    """One GD step of every run in the kernel formulation (same numbers as the closed form)."""
    n = static.n
    a, b = carry.a, carry.b
    # (S, F, n): K_f a_f, as one batched matrix-vector product over all S*F filters (a
    # multiply-and-reduce fusion, or a leading axis of 1, is 10-50x slower on XLA:CPU).
    ka = jnp.einsum("fij,fj->fi", kc.k.reshape(-1, n, n), a.reshape(-1, n)).reshape(a.shape)
    hz = kc.h0 - ka - b[..., None] * kc.v  # <W_f, z_i>
    proj = kc.p0 - jnp.sum(a * kc.v, axis=-1) - b * kc.c  # <W_f, 1_S>
    dn, ds, diverged = _factors(hz, proj, carry.diverged, kc.base, static)
    return KCarry(a + dn, b + ds[..., 0], diverged)


@functools.partial(jax.jit, static_argnames="static", donate_argnums=0)
def kernel_advance(carry: KCarry, kc: KConsts, num_steps, static) -> KCarry:
    return jax.lax.fori_loop(0, num_steps, lambda _, cr: kernel_step(cr, kc, static), carry)


@functools.partial(jax.jit, static_argnames="static")
def kernel_weights_of(carry: KCarry, w0, kc: KConsts, static):
    """``W = where(M, W0 - (A @ Z + b 1_S^T), 0)``: one GEMM (for evaluation and checks)."""
    on_support = jnp.arange(static.d) < static.signal_support
    upd = jnp.einsum("sfn,snd->sfd", carry.a, kc.base.z)
    upd = upd + jnp.where(on_support, carry.b[..., None], 0.0)
    return jnp.where(kc.base.mask, w0 - upd, 0.0)


# ---------------------------------------------------------------------------------------------
# Checking and timing.


def check(dtype="float64", steps=9, options=None, layouts=("shared", "seeds")) -> None:
    """Every variant gives ``train.advance``'s weights after ``steps`` steps, both layouts and
    a few model options. The blocked variant runs with blocks of 2 runs (3 blocks)."""
    global BLOCK_BYTES
    from jaxprune import bench

    saved, BLOCK_BYTES = BLOCK_BYTES, 2 * 8 * 40 * np.dtype(dtype).itemsize
    jax.clear_caches()
    try:
        _check(dtype, steps, options, layouts)
    finally:
        BLOCK_BYTES = saved
        jax.clear_caches()


def _check(dtype, steps, options, layouts):
    from jaxprune import bench

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    options = options or [{}, {"activation_power": 1.0, "output_scale": "sum",
                               "patch_pool": "mean", "signal_support": 3},
                          {"activation_power": 2.0}]
    for layout in layouts:
        for opts in options:
            case = bench.Case("tiny", d=40, n=8, width=4, n_test=16, runs=6, layout=layout,
                              dtype=dtype)
            static = bench.case_static(case, **opts)
            params, seeds = bench.case_inputs(static)
            runner = bench.AdvanceRunner(static, params, seeds)
            state0 = jax.tree.map(lambda a: a.copy(), runner.state)
            runner.run(steps)
            for variant in VARIANTS:
                carry, consts = prepare(jax.tree.map(lambda a: a.copy(), state0), params,
                                        runner.groups, static)
                carry = closed_form_advance(carry, consts, jnp.int32(steps), static, variant)
                tol = dict(rtol=1e-10, atol=1e-13) if dtype == "float64" else dict(
                    rtol=2e-4, atol=1e-6)
                np.testing.assert_allclose(weights(carry, static), runner.weights(), **tol)
                assert np.all(np.asarray(carry.diverged).reshape(-1)
                              == np.asarray(runner.state.diverged))
            pcarry, pc = pipelined_prepare(jax.tree.map(lambda a: a.copy(), state0), params,
                                           runner.groups, static)
            pcarry = pipelined_advance(pcarry, pc, jnp.int32(steps), static)
            np.testing.assert_allclose(weights(pcarry, static), runner.weights(), **tol)
            state_copy = jax.tree.map(lambda a: a.copy(), state0)
            kcarry, kc = kernel_prepare(state_copy, params, runner.groups, static)
            w0 = state0.net.w.reshape(kc.base.mask.shape)
            kcarry = kernel_advance(kcarry, kc, jnp.int32(steps), static)
            w = np.asarray(kernel_weights_of(kcarry, w0, kc, static)).reshape(
                runner.weights().shape)
            np.testing.assert_allclose(w, runner.weights(), **tol)
            print(f"ok: {layout} {opts or 'defaults'} ({dtype}, {steps} steps)")


@functools.partial(jax.jit, donate_argnums=0)
def gemms_only(w, z, num_steps):
    """The step's two GEMMs alone, same shapes and layout (the floor a step can reach):
    ``h = (W @ Z^T) / sqrt(n d)``, ``W = h @ Z``, with no elementwise pass over W."""
    n, d = z.shape[1], z.shape[2]

    def body(_, w):
        h = jnp.einsum("sad,snd->san", w, z) * (1.0 / np.sqrt(n * d))
        return jnp.einsum("san,snd->sad", h, z)

    return jax.lax.fori_loop(0, num_steps, body, w)


def time_case(case, repeats=5, target_s=1.0, variants=("closed", "blocked"),
              log=print) -> dict:
    """Interleaved medians: advance's step (its fori_loop without the final evaluation, as in
    ``jaxprune bench``), each variant's step, and the GEMMs alone."""
    import statistics
    import time

    from jaxprune import bench

    static = bench.case_static(case)
    params, seeds = bench.case_inputs(static)
    adv = bench.AdvanceRunner(static, params, seeds)
    carry, consts = prepare(jax.tree.map(lambda a: a.copy(), adv.state), params, adv.groups,
                            static)
    carries = {v: jax.tree.map(lambda a: a.copy(), carry) for v in variants}
    gemm_w = [carry.w.copy()]
    del carry
    pstate = [pipelined_prepare(jax.tree.map(lambda a: a.copy(), adv.state), params,
                                adv.groups, static)[0]]

    def run_pipelined(k):
        pstate[0] = pipelined_advance(pstate[0], consts, jnp.int32(k), static)
        pstate[0].w.block_until_ready()

    t = time.perf_counter()
    kcarry, kc = kernel_prepare(adv.state, params, adv.groups, static)
    jax.block_until_ready((kcarry, kc))
    kernel_prepare_s = time.perf_counter() - t  # includes compilation
    kstate = [kcarry]

    def run_kernel(k):
        kstate[0] = kernel_advance(kstate[0], kc, jnp.int32(k), static)
        kstate[0].a.block_until_ready()

    def run_variant(v, k):
        carries[v] = closed_form_advance(carries[v], consts, jnp.int32(k), static, v)
        carries[v].w.block_until_ready()

    def run_gemm(k):
        gemm_w[0] = gemms_only(gemm_w[0], consts.z, jnp.int32(k))
        gemm_w[0].block_until_ready()

    fns = {"advance": adv.run_steps}
    fns.update({v: functools.partial(run_variant, v) for v in variants})
    fns.update({"gemms": run_gemm, "kernel": run_kernel,
                "pipelined": run_pipelined})
    for f in fns.values():
        f(1)
    t = time.perf_counter()
    adv.run_steps(1)
    one = time.perf_counter() - t
    k = max(1, min(200, round(target_s / one)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t = time.perf_counter()
            f(k)
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    step = {name: med[name] / k for name in fns}
    flop = bench.step_flops(static) * case.runs
    out = {"case": case, "steps": k, "kernel_prepare_s": kernel_prepare_s,
           "gflops": {name: flop / t / 1e9 for name, t in step.items()},
           "step_s": step}
    log(f"{case.size} {case.layout} R={case.runs} k={k}: " + ", ".join(
        f"{name} {out['gflops'][name]:.1f}" for name in step) + " GFLOP/s"
        + f" (kernel prepare {kernel_prepare_s:.2f} s incl. compile)")
    return out


def _memory_child(spec: str, variant: str) -> None:
    """In a fresh process: peak RSS of 2 steps of a prototype over the RSS before anything was
    allocated (programs compiled first), printed as JSON; compare ``bench._memory_child``."""
    import json

    from jaxprune import bench

    case = bench.Case(**json.loads(spec))
    static = bench.case_static(case)
    params, seeds = bench.case_inputs(static)
    groups_abs = jax.eval_shape(lambda sd: train.make_groups(sd, static), seeds)
    state_abs = jax.eval_shape(lambda p, g: train.init_state(p, g, static), params, groups_abs)
    two = jnp.int32(2)
    if variant == "pipelined":
        prep, adv = pipelined_prepare, pipelined_advance
        run = lambda cr, cs: adv(cr, cs, two, static)  # noqa: E731
    elif variant == "kernel":
        prep, adv = kernel_prepare, kernel_advance
        run = lambda cr, cs: adv(cr, cs, two, static)  # noqa: E731
    else:
        prep, adv = prepare, closed_form_advance
        run = lambda cr, cs: adv(cr, cs, two, static, variant)  # noqa: E731
    carry_abs, consts_abs = jax.eval_shape(lambda s_, p, g: prep(s_, p, g, static), state_abs,
                                           params, groups_abs)
    compiled = jax.jit(run, donate_argnums=0).lower(carry_abs, consts_abs).compile()
    make = train.make_groups.lower(seeds, static=static).compile()
    init = train.init_state.lower(params, groups_abs, static=static).compile()
    prep_c = prep.lower(state_abs, params, groups_abs, static=static).compile()
    baseline = bench._status_kib("VmRSS") * 1024
    groups = make(seeds)
    state = init(params, groups)
    carry, consts = prep_c(state, params, groups)
    jax.block_until_ready((carry, consts))
    sizes = {"state_bytes": bench.tree_bytes(state),
             "data_bytes": bench.tree_bytes(groups) + bench.tree_bytes(params),
             "carry_bytes": bench.tree_bytes(carry), "consts_bytes": bench.tree_bytes(consts)}
    del state  # the prototype's own copies (carry, consts) replace it
    bench._reset_peak()
    carry = compiled(carry, consts)
    jax.block_until_ready(carry)
    print(json.dumps({"baseline": baseline, "steps_peak": bench._status_kib("VmHWM") * 1024,
                      **sizes}))


def memory(case, variant: str) -> dict:
    """``_memory_child`` in a subprocess; ``steps_ratio`` as in ``bench.memory_profile``."""
    import dataclasses
    import json
    import subprocess

    spec = json.dumps(dataclasses.asdict(case))
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import prototypes; prototypes._memory_child({spec!r}, {variant!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-400:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["steps_ratio"] = (out["steps_peak"] - out["baseline"]) / (out["state_bytes"]
                                                                  + out["data_bytes"])
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="check every variant against train.advance")
    parser.add_argument("--time", action="store_true", help="time the variants")
    parser.add_argument("--sizes", nargs="+", default=["paper-d1000"])
    parser.add_argument("--runs", nargs="+", type=int, default=[16, 256, 1024])
    parser.add_argument("--layouts", nargs="+", default=["shared", "seeds"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of each variant in a fresh process")
    parser.add_argument("--block-mb", type=float, default=1.0,
                        help="bytes of W per block of the blocked and pipelined variants")
    args = parser.parse_args()
    BLOCK_BYTES = int(args.block_mb * 2**20)
    if args.check:
        check("float64")
        check("float32")
    if args.time:
        import os

        from jaxprune import bench

        print(f"load {os.getloadavg()[0]:.2f}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
        peak = bench.matmul_peak((1024, 2048), repeats=args.repeats)["best_gflops"]
        print(f"peak {peak:.1f} GFLOP/s")
        for size in args.sizes:
            d, n, width = bench.SIZE_SETS[size]
            for layout in args.layouts:
                for runs in args.runs:
                    time_case(bench.Case(size, d, n, width, runs, layout), args.repeats)
        print(f"load {os.getloadavg()[0]:.2f}")
    if args.memory:
        from jaxprune import bench

        for size in args.sizes:
            d, n, width = bench.SIZE_SETS[size]
            for layout in args.layouts:
                for runs in args.runs:
                    case = bench.Case(size, d, n, width, runs, layout)
                    for variant in ("closed", "blocked", "pipelined", "kernel"):
                        m = memory(case, variant)
                        print(f"memory {size} {layout} R={runs} {variant}: " + (
                            m.get("error") or f"steps peak {m['steps_ratio']:.2f}x state+data "
                            f"(state {m['state_bytes'] / 1e6:.0f} MB, data "
                            f"{m['data_bytes'] / 1e6:.0f} MB, carry "
                            f"{m['carry_bytes'] / 1e6:.0f} MB, consts "
                            f"{m['consts_bytes'] / 1e6:.0f} MB)"), flush=True)
