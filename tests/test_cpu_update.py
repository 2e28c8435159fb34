"""The native CPU products of plain GD (OpenBLAS calls through XLA's FFI) against XLA's own
and a float64 numpy computation, and their fallbacks."""

import dataclasses
import functools
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_dict
from jaxprune import cpu_update, train
from jaxprune.config import sweep_from_dict
from jaxprune.plan import plan_chunks
from jaxprune.spec import run_params_from_table
from test_train import assert_advance_of_no_steps_is_evaluate


@pytest.fixture(scope="module")
def native():
    """The native update must build wherever a C++ compiler is on PATH (as in CI)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on PATH: the native update cannot be built here")
    assert cpu_update.available(), cpu_update.status()


def product_inputs(S, F, n, d, seed=0):
    """Pruned weights W ``(S, F, d)`` (40 % zeros) and noise Z ``(S, n, d)``."""
    rng = np.random.default_rng(seed)
    mask = rng.random((S, F, d)) < 0.6
    w = np.where(mask, rng.standard_normal((S, F, d)), 0.0).astype(np.float32)
    return w, rng.standard_normal((S, n, d)).astype(np.float32)


# F * d * 4 bytes of 1.1 MB per group is three row blocks of 512 KiB (of 100, 100 and 98
# rows; BLOCK_BYTES depends on the machine's cache, so the tests give theirs), d = 947 is no
# multiple of a vector width, S = 3 groups each with their own Z.
BLOCKS = 1 << 19


@pytest.fixture(params=["blas", "own"])
def projection(request, native):
    """Both ways of forming ``W Z^T``: OpenBLAS's sgemm and the own kernel (AVX-512 or AVX2)."""
    if request.param == "own" and not cpu_update.own_projection():
        pytest.skip("this CPU has neither AVX-512 nor AVX2 with FMA: the own projection "
                    "kernel does not run here")
    return request.param


@pytest.mark.parametrize("S, F, n, d", [(1, 298, 30, 947), (3, 40, 7, 64)])
def test_native_projections_equal_float64(projection, S, F, n, d):
    w, z = product_inputs(S, F, n, d)
    exact = np.einsum("sfd,snd->sfn", w.astype(np.float64), z)
    got = jax.jit(functools.partial(cpu_update.projections, block_bytes=BLOCKS,
                                    projection=projection))(w, z)
    assert got.shape == (S, F, n)
    np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6 * np.abs(exact).max())


# The own kernel's cases: n = 1 and 7 are dot tiles only (n < 16), 16 one vector of one panel,
# 100 two panels of 48 columns and four dot columns, 113 two of 48, one of 16 and one dot
# column, 200 four of 48 and 8 dot columns; blocks of at most 13 rows: F = 13 is a tile of 8
# rows, one of 4 and one row, F = 30 three blocks of 10 (8 + 2), F = 1, 2, 3 and 5 no tile of
# 8; d = 1, 17, 129 and 947 end in a part of a vector.
@pytest.mark.parametrize("F, n, d", [(5, 1, 17), (13, 7, 947), (2, 16, 33), (3, 100, 1000),
                                     (13, 113, 64), (1, 200, 1), (30, 200, 129), (13, 100, 1000)])
def test_own_projection_kernel_is_within_float32_summation_error(projection, F, n, d):
    """W Z^T of every tile shape of the own kernel (and of sgemm) against float64: each entry
    is a float32 sum of d products, whose rounding error is at most d eps sum_j |w_j z_j|
    (a tile that dropped or repeated one product would be off by about one |w_j z_j|)."""
    w, z = product_inputs(2, F, n, d, seed=F + n + d)
    exact = np.einsum("sfd,snd->sfn", w.astype(np.float64), z)
    bound = d * np.finfo(np.float32).eps * np.einsum("sfd,snd->sfn", np.abs(w), np.abs(z))
    got = jax.jit(functools.partial(cpu_update.projections, block_bytes=4 * d * 13,
                                    projection=projection))(w, z)
    assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= bound)
    assert np.abs(exact).max() > 1.0  # the products are not all zero


@pytest.mark.parametrize("F, n, d, columns", [(13, 113, 64, 16), (30, 200, 129, 48),
                                              (3, 100, 1000, 32), (5, 7, 17, 16)])
def test_projections_in_column_blocks(projection, F, n, d, columns):
    """With the examples cut into blocks of ``columns`` (the evaluation's test examples), W Z^T
    is still within float32 summation error of float64 in every block, the last one partial
    (113 = 7 x 16 + 1, 200 = 4 x 48 + 8, 100 = 3 x 32 + 4, 7 < 16). With the own kernel each
    entry has the same bits whatever rows of W share the call, so that the evaluation's
    metrics of a run do not depend on its batch (sgemm's depend on the block's rows)."""
    w, z = product_inputs(2, F, n, d, seed=F + n)
    exact = np.einsum("sfd,snd->sfn", w.astype(np.float64), z)
    bound = d * np.finfo(np.float32).eps * np.einsum("sfd,snd->sfn", np.abs(w), np.abs(z))
    call = jax.jit(functools.partial(cpu_update.projections, block_bytes=4 * d * 13,
                                     projection=projection, column_bytes=4 * d * columns + 7))
    got = np.asarray(call(w, z), np.float64)
    assert np.all(np.abs(got - exact) <= bound)
    assert np.abs(exact).max() > 1.0
    if projection == "own" and cpu_update.own_projection():
        some = call(w[:, 1:F - 1], z)
        np.testing.assert_array_equal(some, got[:, 1:F - 1].astype(np.float32))


def test_auto_projection_uses_the_own_kernel_where_it_pays(native):
    """``auto`` forms W Z^T with the own kernel where it has a 16-wide panel (n >= 16) and a
    block has enough rows, with Z packed once per call where a group takes several blocks and
    by the block where it takes one; elsewhere with sgemm. The two round differently, so the
    bits tell which ran (at d = 1000: with d = 300 OpenBLAS's AVX2 kernels summed n = 7
    columns in the own kernel's order)."""
    if not cpu_update.own_projection():
        pytest.skip("this CPU has neither AVX-512 nor AVX2 with FMA: the own projection "
                    "kernel does not run here")
    block = cpu_update.OWN_MIN_BLOCK_ROWS
    many = 1000  # four blocks of 1 MiB: Z packed once per call
    for rows, n, expected in ((many, 20, "own"), (200, 20, "own"),  # one block: by the block
                              (block, 100, "own"), (block - 4, 100, "blas"),  # block rows
                              (many, 30, "own"), (many, 16, "own"),  # 14 and 0 dot columns
                              (many, 15, "blas"), (many, 7, "blas")):  # no panel
        w, z = product_inputs(1, rows, n, 1000)
        got = {p: np.asarray(cpu_update.projections(w, z, block_bytes=1 << 20, projection=p))
               for p in ("auto", "own", "blas")}
        assert not np.array_equal(got["own"], got["blas"])
        np.testing.assert_array_equal(got["auto"], got[expected], err_msg=f"{rows} x {n}")


@pytest.mark.parametrize("formulation", ["direct", "kernel"])
def test_advance_of_no_steps_is_evaluate_with_native_products(native, formulation):
    """As ``test_train.test_advance_of_no_steps_is_evaluate``, in float32 with the native
    products."""
    static, params, groups = _small_chunk(bias=True)
    static = dataclasses.replace(static, formulation=formulation)
    assert_advance_of_no_steps_is_evaluate(params, groups, static)


def test_projections_read_the_groups_at_an_offset(native):
    """``first_group`` picks which groups of Z the call reads (the evaluation's blocks read
    theirs without a copy); groups past the end of Z are an error, not a read past it."""
    w, z = product_inputs(3, 20, 40, 64)
    call = jax.jit(cpu_update.projections)
    np.testing.assert_array_equal(call(w[:2], z, first_group=1), call(w[:2], z[1:]))
    assert not np.array_equal(call(w[:2], z, first_group=1), call(w[:2], z[:2]))
    with pytest.raises(Exception, match="groups past the end of Z"):
        jax.block_until_ready(call(w[:2], z, first_group=2))


@pytest.mark.parametrize("model", [{"activation_power": 1.0},
                                   {"activation_power": 3.0, "bias": True, "patch_pool": "mean"}])
def test_native_evaluation_products_give_xla_metrics(native, model):
    """The evaluation with the projections of W and W(0) by the own kernel (200 test examples:
    column blocks of 96, 96 and 8) gives XLA's metrics, per example, to float32 rounding, in
    blocks of one seed (each call reading its seed's examples at an offset into all of them)
    and of all three; and a run's metrics agree in either to a few float32 ulps (the same bits
    with the XLA of jax 0.10; jax 0.6.1's summed a loss 1 ulp apart)."""
    if not cpu_update.own_projection():
        pytest.skip("this CPU has neither AVX-512 nor AVX2 with FMA: the evaluation keeps "
                    "XLA's products here")
    static, params, groups = _small_chunk(
        data={"n_test": 200, "label_flip": 0.1, "signal_norm": 8.0}, model=model,
        prune={"fraction": [0.0, 0.3, 0.6]})
    state = train.init_state(params, groups, static)
    state = jax.jit(train._gd_loop, static_argnames=("static", "native"))(
        state, params, groups, jnp.int32(30), static=static, native=False)
    evaluate = jax.jit(functools.partial(train._evaluate, static=static),
                       static_argnames=("native", "block_bytes"))
    one_seed = 1  # bytes: blocks of one group each
    assert train._run_blocks(static, one_seed, 1) == (0, 1)
    xla = evaluate(state, params, groups, native=False, block_bytes=one_seed)
    ours = {b: evaluate(state, params, groups, native=True, block_bytes=b)
            for b in (one_seed, train.EVAL_BLOCK_BYTES)}
    assert train._run_blocks(static, train.EVAL_BLOCK_BYTES, 1) == (0, 3)
    for field in xla._fields:
        want = np.asarray(getattr(xla, field))
        got = np.asarray(getattr(ours[one_seed], field))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=field)
        np.testing.assert_allclose(getattr(ours[train.EVAL_BLOCK_BYTES], field), got,
                                   rtol=1e-6, atol=1e-7, err_msg=field)
    # The networks' outputs are not 0 (a loss of log 2: 100x the tolerance), and differ; the
    # weights have moved from W(0) (a memorization of 0 would hide a wrong W(0) projection).
    for loss in (xla.test_loss, xla.train_loss):
        assert np.all(np.abs(np.asarray(loss) - np.log(2)) > 1e-4), loss
        assert len(set(np.asarray(loss).round(4))) == 9
    assert np.all(np.abs(np.asarray(xla.noise_memorization)) > 1e-3), xla.noise_memorization


def threefry_reference(key1, key2, x1, x2):
    """Threefry-2x32, 20 rounds (Salmon et al. 2011), in numpy's uint32 arithmetic."""
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
    a, b = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            a = a + b
            b = (b << np.uint32(r)) | (b >> np.uint32(32 - r))
            b = b ^ a
        a = a + ks[(i + 1) % 3]
        b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
    return a, b


def test_native_threefry_hash(native):
    """``jaxprune_threefry2x32`` gives Random123's known answers for Threefry-2x32-20 and the
    reference's hash of 100,003 random keys and counters (more than one block of the call)."""
    call = jax.ffi.ffi_call("jaxprune_threefry2x32",
                            (jax.ShapeDtypeStruct((3,), np.uint32),) * 2)
    known = np.array([[0, 0, 0, 0, 0x6B200159, 0x99BA4EFE],
                      [0xFFFFFFFF] * 4 + [0x1CB996FC, 0xBB002BE7],
                      [0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3, 0xC4923A9C,
                       0x483DF7A0]], np.uint32)
    got = call(*(known[:, i] for i in range(4)))
    np.testing.assert_array_equal(np.stack(got, axis=1), known[:, 4:])
    words = np.random.default_rng(0).integers(0, 2**32, (4, 100_003), dtype=np.uint32)
    call = jax.ffi.ffi_call("jaxprune_threefry2x32",
                            (jax.ShapeDtypeStruct((100_003,), np.uint32),) * 2)
    for got, want in zip(call(*words), threefry_reference(*words)):
        np.testing.assert_array_equal(got, want)


def test_data_drawn_with_the_native_hash_are_jaxs(native, tmp_path):
    """A chunk's data and draws (``train.make_groups``) with the native threefry hash as JAX's
    CPU lowering are the same bits as with JAX's own lowering (a process with the native calls
    off)."""
    assert "threefry hash natively" in cpu_update.status()
    static, _, _ = _small_chunk(data={"noise_orthogonal": True, "n_test": 33},
                                model={"init": "uniform_fan_in"})
    (tmp_path / "static.pkl").write_bytes(pickle.dumps(static))
    seeds = [7, 2**31 + 5, 123456789]
    script = (
        "import pickle, numpy as np, jax, jax.numpy as jnp\n"
        "from jaxprune import cpu_update, train\n"
        "assert cpu_update.status().startswith('XLA'), cpu_update.status()\n"
        "static = pickle.load(open('static.pkl', 'rb'))\n"
        f"seeds = jnp.asarray({seeds}, jnp.uint32)\n"
        "np.savez('jax.npz', *jax.tree.leaves(train.make_groups(seeds, static)))\n")
    env = dict(os.environ, JAXPRUNE_NATIVE_UPDATE="0")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=tmp_path)
    theirs = np.load(tmp_path / "jax.npz")
    ours = jax.tree.leaves(train.make_groups(jnp.asarray(seeds, jnp.uint32), static))
    assert len(ours) == len(theirs.files)
    for i, leaf in enumerate(ours):
        np.testing.assert_array_equal(leaf, theirs[f"arr_{i}"])


def symmetric_inputs(S, F, n, seed=0):
    """Symmetric K ``(S, F, n, n)`` (Gram matrices of random vectors) and A ``(S, F, n)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((S, F, n, n + 3))
    return ((x @ np.swapaxes(x, -1, -2)).astype(np.float32),
            rng.standard_normal((S, F, n)).astype(np.float32))


# Filters of n = 1; F = 5 and 3 interleave 1 filter, 6 two, 300 four, 40 and 1000 eight, 32
# sixteen where the CPU has AVX-512 (1000 and 600 filters make many of the call's blocks);
# n = 50 and 100 are the kernel formulation's sizes, no multiple of a vector width.
@pytest.mark.parametrize("S, F, n", [(1, 5, 1), (2, 6, 9), (2, 300, 7), (3, 40, 50),
                                     (1, 1000, 50), (2, 32, 50), (1, 3, 100)])
def test_native_symmetric_products_equal_float64(native, S, F, n):
    k, a = symmetric_inputs(S, F, n)
    exact = np.einsum("sfij,sfj->sfi", k.astype(np.float64), a)
    upper = k[(..., *cpu_update.pack_upper(n))]
    lanes = cpu_update.interleave(upper)
    L = {5: 1, 3: 1, 6: 2, 300: 4, 32: cpu_update.vector_lanes()}.get(F, 8)
    assert lanes.shape == (S, F // L, n * (n + 1) // 2, L)
    np.testing.assert_array_equal(lanes[:, 1, :, L - 1], upper[:, 2 * L - 1])
    np.testing.assert_array_equal(cpu_update.deinterleave(lanes), upper)
    got = jax.jit(cpu_update.symmetric_products)(lanes, a)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    # XLA's products of the triangles unpacked (the path off the CPU) and of the full K.
    for xla in (train._unpacked_gram_products(lanes, a), train._gram_products(k, a)):
        np.testing.assert_allclose(xla, exact, rtol=0, atol=1e-6 * np.abs(exact).max())


def test_native_symmetric_products_are_the_same_numbers_at_every_lane_count(native):
    """The kernels for 1, 2, 4, 8 and (with AVX-512) 16 lanes do the same operations in the
    same order per filter, so a chunk's numbers do not depend on the CPU's vector width; rows
    of the triangles go 4 at a time, so n = 50 also takes the last 2 one at a time."""
    k, a = symmetric_inputs(1, 16, 50, seed=1)
    upper = k[(..., *cpu_update.pack_upper(50))]
    products = {}
    for L in (1, 2, 4, 8, 16)[:cpu_update.vector_lanes().bit_length()]:
        lanes = jnp.swapaxes(upper.reshape(1, 16 // L, L, -1), -1, -2)
        products[L] = np.asarray(cpu_update.symmetric_products(lanes, a))
    for L, got in products.items():
        np.testing.assert_array_equal(got, products[1], err_msg=f"{L} lanes")


def test_native_symmetric_products_name_a_wrong_layout(native):
    k, a = symmetric_inputs(1, 6, 4)
    upper = k[(..., *cpu_update.pack_upper(4))]
    with pytest.raises(Exception, match=r"L = 1, 2, 4, 8 or"):
        jax.block_until_ready(cpu_update.symmetric_products(upper.reshape(1, 2, 10, 3), a))


def _small_chunk(bias=False, dtype="float32", **sections):
    """A chunk of 9 runs (3 seeds x 3 fractions) in the direct formulation, float32 unless
    ``dtype`` says otherwise; other fields of the sweep's sections as given."""
    fields = {"data": {"d": 300, "n": 12, "n_test": 16, "signal_support": 2},
              "model": {"width": 5, "bias": bias}, "prune": {"fraction": [0.0, 0.5, 0.9]},
              "train": {"dtype": dtype}, "sweep": {"seeds": 3}}
    for name, more in sections.items():
        fields[name] = {**fields.get(name, {}), **more}
    raw = tiny_dict(**fields)
    table = sweep_from_dict(raw).run_table()
    (chunk,) = plan_chunks(table, memory_budget=2**34, max_buckets=1)
    static = dataclasses.replace(chunk.static, formulation="direct")
    ids = chunk.runs.reshape(-1)
    params = jax.tree.map(jnp.asarray, run_params_from_table(
        {k: v[ids] for k, v in table.columns.items()}, static.float_dtype))
    groups = train.make_groups(jnp.asarray(table.columns["seed"][chunk.runs[:, 0]]), static)
    return static, params, groups


def test_native_gram_triangles_are_within_float32_summation_error(native):
    """The kernel formulation's Gram matrices as the CPU keeps them (upper triangles of
    ``Z' diag(M_f) Z'^T``, ``Z' = [Z; 1_S]``, by the own projection kernel in column blocks
    of pairs, interleaved 2 filters a set here) against float64: each entry is a float32 sum
    of d products, so within d eps of the sum of their magnitudes."""
    static, params, groups = _small_chunk()
    static = dataclasses.replace(static, formulation="kernel")
    state = train.init_state(params, groups, static)
    got = np.asarray(cpu_update.deinterleave(train.build_gram(state.mask, groups,
                                                              static).matrices))
    S, F, d = static.groups, static.group_size * 2 * static.width, static.d
    z = np.asarray(train._support_noise(groups.train.noise, static), np.float64)
    i, j = cpu_update.pack_upper(z.shape[1])
    mask = np.asarray(state.mask).reshape(S, F, d)
    exact = np.einsum("sfd,skd->sfk", mask, z[:, i] * z[:, j])
    bound = d * np.finfo(np.float32).eps * np.einsum("sfd,skd->sfk", mask,
                                                     np.abs(z[:, i] * z[:, j]))
    assert got.shape == exact.shape == (3, 30, 91)
    assert np.all(np.abs(got - exact) <= bound)
    assert np.abs(exact).max() > 100.0


@pytest.mark.parametrize("bias, formulation, sizes", [
    (False, "direct", {}), (True, "direct", {}), (True, "kernel", {}),
    (False, "direct", {"data": {"n": 20}, "model": {"width": 16}}),
    (False, "direct", {"data": {"signal_support": 21}})])
def test_gd_with_native_update_equals_xla_update(native, bias, formulation, sizes):
    """40 float32 GD steps of 9 runs (3 seeds x 3 fractions, S = 3 groups): with the native
    segments (each thread a run through all the steps; in the kernel formulation Gram matrices
    as interleaved upper triangles) and with XLA's, the weights agree to float32 rounding; so
    do one step and none. With 32 filters and n = 20 the direct segment's projections are the
    own kernel's (where the CPU has AVX-512, or AVX2 and FMA), with 10 sgemm's. d = 40: the
    AVX2 update's two panels of 16 columns and its last 8; a signal support of 21 crosses
    both."""
    static, params, groups = _small_chunk(bias, **sizes)
    static = dataclasses.replace(static, formulation=formulation)
    assert static.float_dtype == np.float32 and static.groups == 3
    state0 = train.init_state(params, groups, static)
    loop = jax.jit(train._gd_loop, static_argnames=("static", "native"))
    for steps in (0, 1):
        one = {native: loop(state0, params, groups, jnp.int32(steps), static=static,
                            native=native).net.w for native in (True, False)}
        np.testing.assert_allclose(one[True], one[False], rtol=0, atol=1e-6)
    runs = {native: loop(state0, params, groups, jnp.int32(40), static=static, native=native)
            for native in (True, False)}
    w, w_xla = np.asarray(runs[True].net.w), np.asarray(runs[False].net.w)
    moved = np.abs(w_xla - np.asarray(state0.net.w)).max()
    assert moved > 1e-2
    np.testing.assert_allclose(w, w_xla, rtol=0, atol=1e-5 * np.abs(w_xla).max())
    assert np.all(w[~np.asarray(state0.mask)] == 0.0)
    if bias:
        np.testing.assert_allclose(runs[True].net.b, runs[False].net.b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, data", [
    ({"activation_power": 1.0, "bias": True, "output_scale": "sum", "patch_pool": "mean"},
     {"label_flip": 0.2}),
    ({"activation_power": 2.0}, {}),
    ({"activation_power": 1.5, "bias": True}, {"label_flip": 0.1}),
    ({"activation_power": 3.0, "patch_pool": "mean"}, {})])
@pytest.mark.parametrize("formulation", ["direct", "kernel"])
def test_native_segments_equal_xla_for_every_loss_head(native, model, data, formulation):
    """The native segments write the loss head out (``cpu_update.cc``), XLA differentiates the
    model's. For each activation (integer powers by products, 1.5 by pow; ReLU's slope at 0 as
    JAX takes it), pooling, output scale, bias and label noise: 40 steps of 9 runs, the
    weights and biases to float32 rounding. A non-integer power q has a slope only
    (q - 1)-Hoelder at 0: a pre-activation near 0 turns float32's rounding (6e-8) into slope
    errors of its square root (2.4e-4) for q = 1.5, so there the two float32 paths part by
    more (on an AVX2 CPU, sgemm's projections: 1.9e-5 of the largest weight after 40 steps,
    1.8e-5 from the float64 result, against XLA's 2.3e-6)."""
    static, params, groups = _small_chunk(model=model, data=data)
    static = dataclasses.replace(static, formulation=formulation)
    state0 = train.init_state(params, groups, static)
    loop = jax.jit(train._gd_loop, static_argnames=("static", "native"))
    got, want = (loop(state0, params, groups, jnp.int32(40), static=static, native=native)
                 for native in (True, False))
    w0, w = np.asarray(state0.net.w), np.asarray(want.net.w)
    assert np.abs(w - w0).max() > 1e-2
    rounding = 1e-4 if static.activation_power % 1 else 1e-5
    np.testing.assert_allclose(got.net.w, w, rtol=0, atol=rounding * np.abs(w).max())
    if static.bias:
        np.testing.assert_allclose(got.net.b, want.net.b, rtol=0, atol=1e-5)
    assert not np.asarray(want.diverged).any() and not np.asarray(got.diverged).any()


@pytest.mark.parametrize("formulation", ["direct", "kernel"])
def test_native_segments_pack_new_noise_at_an_old_address(native, formulation):
    """A segment call's threads keep the noise they packed for their next run of the same
    group; a later call whose noise lies where the last one's did (a donated buffer, reused)
    packs it again: its weights are XLA's for the new noise. One seed of 8 runs, its noise
    reversed in place between calls, 12 times (which threads run a call varies: each call
    after the first one finds what a thread packed for the last one with high probability);
    with 32 filters and n = 20 the projections are the own kernel's, from the packed
    noise."""
    static, params, groups = _small_chunk(data={"n": 20}, model={"width": 16},
                                          prune={"fraction": [i / 10 for i in range(8)]},
                                          sweep={"seeds": 1})
    static = dataclasses.replace(static, formulation=formulation)
    assert (static.groups, static.group_size) == (1, 8)
    state0 = train.init_state(params, groups, static)
    loop = jax.jit(train._gd_loop, static_argnames=("static", "native"))
    reverse = jax.jit(lambda z: z[:, ::-1], donate_argnums=0)
    address = groups.train.noise.unsafe_buffer_pointer()
    for _ in range(12):
        got, want = (loop(state0, params, groups, jnp.int32(3), static=static,
                          native=native).net.w for native in (True, False))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        noise = reverse(groups.train.noise)
        assert noise.unsafe_buffer_pointer() == address
        groups = groups._replace(train=groups.train._replace(noise=noise))


@pytest.mark.parametrize("formulation", ["direct", "kernel"])
def test_native_segments_freeze_the_runs_xla_freezes(formulation):
    """Learning rates up to 10^7: the runs whose loss overflows are marked diverged, as XLA
    marks them, and frozen with finite weights; the others train on (those of learning rate
    0.05 to XLA's weights: past it, float32 rounding grows step by step)."""
    static, params, groups = _small_chunk(train={"learning_rate": [0.05, 1e3, 1e7]})
    static = dataclasses.replace(static, formulation=formulation)
    state0 = train.init_state(params, groups, static)
    loop = jax.jit(train._gd_loop, static_argnames=("static", "native"))
    got, want = (loop(state0, params, groups, jnp.int32(40), static=static, native=native)
                 for native in (True, False))
    diverged = np.asarray(want.diverged)
    assert diverged.any() and not diverged.all()
    np.testing.assert_array_equal(got.diverged, diverged)
    assert np.isfinite(np.asarray(got.net.w)).all()
    small = np.asarray(params.learning_rate) == np.float32(0.05)
    w = np.asarray(want.net.w)[small]
    np.testing.assert_allclose(np.asarray(got.net.w)[small], w, rtol=0,
                               atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("call", ["direct_steps", "kernel_steps"])
def test_segment_calls_name_inconsistent_head_inputs(native, call):
    """Head inputs of the wrong size (labels of one example too few) are an error naming the
    call, not a read past a buffer."""
    static, params, groups = _small_chunk()
    state = train.init_state(params, groups, static)
    S, G, m = static.groups, static.group_size, static.width
    by_group = jax.tree.map(lambda a: a.reshape((S, G) + a.shape[1:]), params)
    head = list(train._head_inputs(by_group, groups.train, static))
    head[1] = head[1][..., 1:]
    w = state.net.w.reshape(S, G * 2 * m, static.d)
    b, diverged = jnp.zeros((S, G, 2, m), w.dtype), jnp.zeros((S, G), bool)
    args = (w, groups.train.noise, state.mask.reshape(w.shape), b, diverged, head)
    if call == "kernel_steps":
        gram = train.build_gram(state.mask, groups, dataclasses.replace(static,
                                                                         formulation="kernel"))
        args += (gram.matrices,)
    args += (1,)
    with pytest.raises(Exception, match=f"{call} got inconsistent shapes"):
        jax.block_until_ready(getattr(cpu_update, call)(
            *args, power=3.0, support=static.signal_support, bias=False))


@pytest.mark.parametrize("seeds, fractions, width", [(3, 3, 5), (1, 8, 2), (16, 1, 5)])
def test_kernel_steps_in_blocks_of_runs_equal_all_runs_at_once(native, seeds, fractions,
                                                                width):
    """The kernel formulation on the CPU takes a segment's steps a block of runs at a time:
    natively (Gram matrices as interleaved triangles), each thread a block of the fewest
    groups (3 seeds of 30 filters, 2 lanes: 1 group) or runs (1 seed of 8 runs of 4 filters,
    16 or 8 lanes: 4 or 2 runs) that hold whole sets of lanes, or of groups that share their
    sets (16 seeds of 10 filters: 8 or 4 groups a set); in XLA (full matrices) blocks of about
    ``kernel_block_bytes``, one after the other in a loop. The weights and biases are those of
    XLA's steps of all runs at once to float32 rounding; the native segment forms its
    projections and update with its own products, so it is held to the float64 result as
    close as XLA's float32 steps are (on the most sensitive run here, rounding grows over 30
    steps to 1.9e-5 of the largest weight for XLA's float32, 3.2e-6 for the native)."""
    def chunk_of(dtype):
        static, params, groups = _small_chunk(
            True, dtype, model={"width": width}, sweep={"seeds": seeds},
            prune={"fraction": [i / 10 for i in range(fractions)]})
        static = dataclasses.replace(static, formulation="kernel")
        return static, params, groups, train.init_state(params, groups, static)

    static, params, groups, state0 = chunk_of("float32")
    assert (static.groups, static.group_size) == (seeds, fractions) and static.kernel_step
    # Sets of a vector's lanes wherever the chunk's S F filters allow them.
    lanes = train.build_gram(state0.mask, groups, static).matrices.shape[-1]
    assert lanes == math.gcd(seeds * fractions * 2 * width, cpu_update.vector_lanes())
    loop = jax.jit(train._gd_loop, static_argnames=("static", "native", "kernel_block_bytes"))
    runs = {}
    for native, block_bytes in ((True, 1), (False, 1), (False, train.UNBLOCKED)):
        args = (state0, params, groups, jnp.int32(30))
        kwargs = dict(static=static, native=native, kernel_block_bytes=block_bytes)
        text = loop.lower(*args, **kwargs).as_text()
        runs[native, block_bytes] = (text.count("stablehlo.while"),
                                     text.count("jaxprune_kernel_steps"), loop(*args, **kwargs).net)
    (_, native_calls, natively), (blocked_loops, xla_calls, blocked), (whole_loops, _, whole) = \
        runs.values()
    assert (native_calls, xla_calls) == (1, 0)  # one native call, its own blocks
    assert blocked_loops == whole_loops + 1  # XLA's loop over blocks
    assert np.abs(np.asarray(whole.w) - np.asarray(state0.net.w)).max() > 1e-2
    # A block's float32 sums may be ordered otherwise than the whole chunk's (a few ulps).
    for field in ("w", "b"):
        want = np.asarray(getattr(whole, field))
        np.testing.assert_allclose(getattr(blocked, field), want, rtol=0,
                                   atol=1e-6 * np.abs(want).max())
    static64, params64, groups64, state64 = chunk_of("float64")
    exact = loop(state64, params64, groups64, jnp.int32(30), static=static64, native=False,
                 kernel_block_bytes=train.UNBLOCKED).net
    for field in ("w", "b"):
        want = np.asarray(getattr(exact, field))
        far = {name: np.abs(np.asarray(getattr(net, field), np.float64) - want).max()
               for name, net in (("xla", whole), ("native", natively))}
        assert far["native"] <= max(2 * far["xla"], 1e-6 * np.abs(want).max()), far


def test_avx2_builds_where_the_cpu_also_has_avx512(native):
    """Where the CPU has AVX-512 its builds run; with ``JAXPRUNE_NO_AVX512`` set the AVX2 ones
    do (the own projection kernel, the loss head, the mask, 8 Gram lanes; the hash's baseline
    build), as on a CPU without it: this file's tests of the native products pass in a
    process that sets it."""
    if cpu_update.vector_lanes() != 16:
        pytest.skip("this CPU has no AVX-512: this file's tests already ran the AVX2 builds")
    env = dict(os.environ, JAXPRUNE_NO_AVX512="1")
    check = ("from jaxprune import cpu_update; "
             "assert cpu_update.vector_lanes() == 8 and cpu_update.own_projection()")
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
    tests = ("projection or symmetric or native_update_equals or native_segments "
             "or kernel_steps_in_blocks or native_threefry_hash")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", tests],
        env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-600:]


def test_native_update_is_not_used_for_float64():
    assert not cpu_update.available(np.float64)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("JAXPRUNE_NATIVE_UPDATE", "0")
    with pytest.raises(cpu_update.Unavailable, match="JAXPRUNE_NATIVE_UPDATE=0"):
        cpu_update._register()


def test_a_failed_build_names_the_compiler_and_its_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXPRUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(cpu_update.Unavailable, match="false failed to build cpu_update.cc"):
        cpu_update._build()
    assert list(tmp_path.iterdir()) == []  # no half-built library left in the cache


def test_a_failed_build_is_tried_once_and_its_reason_reported(monkeypatch, tmp_path):
    """A failing compiler runs once per process, not on every ``status()``/``available()``."""
    monkeypatch.setenv("JAXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXPRUNE_NATIVE_UPDATE", raising=False)
    calls = tmp_path / "calls"
    compiler = tmp_path / "broken-c++"
    compiler.write_text(f"#!/bin/sh\necho run >> {calls}\necho 'broken compiler' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setattr(cpu_update, "_openblas", lambda: None)  # reach the build
    # A fresh cache, put back after the test, so that neither this nor earlier builds leak.
    monkeypatch.setattr(cpu_update, "_outcome", functools.cache(cpu_update._outcome.__wrapped__))
    for _ in range(2):
        assert not cpu_update.available()
        assert cpu_update.status() == (f"XLA: {compiler} failed to build cpu_update.cc: "
                                       "broken compiler")
    with pytest.raises(cpu_update.Unavailable, match="broken compiler"):
        cpu_update._load()
    assert calls.read_text().splitlines() == ["run"]


def test_an_unloadable_library_in_the_cache_is_named(monkeypatch, tmp_path):
    """A damaged cached library turns the native products off with a message naming it."""
    monkeypatch.setenv("JAXPRUNE_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "cpu_update-broken.so"
    broken.write_bytes(b"not a library")
    monkeypatch.setattr(cpu_update, "_build", lambda: broken)
    with pytest.raises(cpu_update.Unavailable, match="cpu_update-broken.so.*delete it"):
        cpu_update._register()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS's x86-64 core names")
@pytest.mark.parametrize("core", ["Nehalem", "Sandybridge"])
def test_status_names_the_kernels_openblas_runs_and_who_chose_them(native, core):
    """OpenBLAS picks its kernels when it loads, from the CPU or from OPENBLAS_CORETYPE (set on
    some machines to hold a CPU to older kernels, at half its speed): the status says which."""
    code = "from jaxprune import cpu_update; print(cpu_update.status())"
    env = {**os.environ, "OPENBLAS_CORETYPE": core.upper()}  # OpenBLAS ignores the case
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert f"OpenBLAS ({core} kernels, OPENBLAS_CORETYPE={core.upper()})" in out, out
    # The library's own kernels check the CPU, not the variable.
    assert f"read {cpu_update.vector_lanes()} filters at a time" in out, out
    builds = ("AVX-512" if cpu_update.vector_lanes() == 16
              else "AVX2" if cpu_update.own_projection() else "baseline")
    assert f"its own kernels' {builds} builds" in out, out


def test_cache_bytes_are_the_first_cores_cache_of_a_level(tmp_path):
    def cache(*levels_and_sizes):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        for i, (level, size) in enumerate(levels_and_sizes):
            (folder / f"index{i}").mkdir(parents=True)
            (folder / f"index{i}" / "level").write_text(f"{level}\n")
            (folder / f"index{i}" / "size").write_text(f"{size}\n")
        return folder

    l2 = functools.partial(cpu_update.cache_bytes, 2, 512 << 10, 256 << 10, 8 << 20)
    xeon = cache((1, "48K"), (1, "32K"), (2, "2048K"), (3, "107520K"))
    assert l2(cpu=xeon) == 2 << 20
    assert cpu_update.cache_bytes(3, 0, 0, 1 << 30, cpu=xeon) == 107520 << 10
    assert l2(cpu=cache((1, "32K"), (2, "512K"))) == 512 << 10
    assert l2(cpu=cache((2, "32M"))) == 8 << 20  # clamped
    assert l2(cpu=cache((2, "64K"))) == 256 << 10  # clamped
    assert l2(cpu=cache((1, "32K"))) == 512 << 10  # no L2: the default
    assert l2(cpu=tmp_path / "absent") == 512 << 10


def test_native_calls_leave_numpys_blas_threads_as_they_were(native):
    """OpenBLAS's thread count is one global: the calls set it to 1 while their blocks run on
    XLA's threads and must put it back after (each thread restoring what it had read left
    numpy's own products on one thread for the rest of the process; so did each call, where
    XLA ran the steps' and the projections' programs at once)."""
    blas = cpu_update._openblas()
    static, params, groups = _small_chunk()
    state = train.init_state(params, groups, static)
    steps = jax.jit(train._gd_loop, static_argnames=("static", "native"))
    w, z = product_inputs(2, 64, 8, 256)
    project = jax.jit(functools.partial(cpu_update.projections, block_bytes=1024))
    original = blas.get_threads()
    for threads in (3, 2):
        blas.set_threads(threads)
        for _ in range(20):
            state = steps(state, params, groups, jnp.int32(2), static=static, native=True)
            jax.block_until_ready((state, project(w, z)))  # one row a block: 128 blocks
        assert blas.get_threads() == threads
    blas.set_threads(original)


def test_concurrent_native_calls_leave_numpys_blas_threads_as_they_were(native):
    """Calls running at once (here from two Python threads; XLA may run two programs' calls
    at once) put OpenBLAS's count back as the first found it: with each call putting back
    what it had read, the later one restored the 1 the earlier had set (20 of 20 trials)."""
    blas = cpu_update._openblas()
    w, z = product_inputs(2, 64, 8, 256)
    project = jax.jit(functools.partial(cpu_update.projections, block_bytes=1024))
    jax.block_until_ready(project(w, z))

    def calls():
        for _ in range(50):
            jax.block_until_ready(project(w, z))

    original = blas.get_threads()
    for _ in range(5):
        blas.set_threads(3)
        threads = [threading.Thread(target=calls) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert blas.get_threads() == 3
    blas.set_threads(original)
