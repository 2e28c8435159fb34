"""The batched engine against the literal float64 reference, one run at a time."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_dict
from jaxprune import bench, cpu_update, spec, train
from jaxprune.config import sweep_from_dict
from jaxprune.model import Network
from jaxprune.plan import PAD, plan_chunks
from jaxprune.spec import run_params_from_table
from reference import Reference

STEPS = 12

OPTION_SETS = {
    # Mixed sizes padded into one program; the theory's defaults (q = 3, plain GD).
    "padded-defaults": dict(
        data={"d": [30, 40], "n": [6, 8], "n_test": [20, 32]},
        model={"width": [3, 4]}, prune={"fraction": [0.0, 0.6]}),
    # Kou et al.'s conventions with an exact mask and momentum.
    "kou-exact-momentum": dict(
        preset="kou2023",
        data={"d": 40, "n": 8, "n_test": 32, "label_flip": 0.2, "signal_norm": 2.0},
        model={"width": 4}, prune={"fraction": [0.25, 0.7], "mask": "exact"},
        train={"optimizer": "momentum", "learning_rate": 0.1, "steps": STEPS}),
    # Plain GD with Kou et al.'s ReLU network with bias.
    "kou-gd-bias": dict(
        preset="kou2023",
        data={"d": 40, "n": 8, "n_test": 32, "label_flip": 0.2, "signal_norm": 2.0},
        model={"width": 4}, prune={"fraction": [0.25, 0.7]},
        train={"optimizer": "gd", "learning_rate": 0.1, "steps": STEPS}),
    # A trained bias with a normal initialization (the bias starts at 0, one per filter).
    "gd-bias-normal-init": dict(
        data={"d": 30, "n": 6, "n_test": 20}, model={"width": 3, "bias": True},
        prune={"fraction": [0.0, 0.5]}),
    # Adam, a fractional power, orthogonal noise, a 3-sparse signal, swept scalars.
    "adam-orthogonal": dict(
        data={"d": 36, "n": 8, "n_test": 24, "noise_orthogonal": True, "signal_support": 3,
              "label_flip": 0.1, "signal_norm": [2.0, 4.0], "noise_std": [0.5, 1.0]},
        model={"width": 3, "activation_power": 2.5, "init_std": [0.01, 0.05]},
        prune={"fraction": 0.4}, train={"optimizer": "adam", "learning_rate": 0.01}),
}


def build(raw_sections, max_buckets=1):
    """The sweep, its run table and one chunk holding every run (sizes padded together)."""
    raw = tiny_dict(**{k: v for k, v in raw_sections.items() if k != "preset"})
    if "preset" in raw_sections:
        raw["preset"] = raw_sections["preset"]
        # Let the preset decide what the tiny defaults would otherwise fix.
        raw["train"].pop("learning_rate", None)
    raw["train"].update(steps=STEPS, dtype="float64")
    sweep = sweep_from_dict(raw)
    table = sweep.run_table()
    (chunk,) = plan_chunks(table, memory_budget=2**34, max_buckets=max_buckets)
    return sweep, table, chunk


def chunk_data(table, chunk, static):
    """A chunk's seeds, per-run params and data groups, in its layout's order."""
    cols = {k: v[chunk.runs.reshape(-1)] for k, v in table.columns.items()}
    params = jax.tree.map(jnp.asarray, run_params_from_table(cols, static.float_dtype))
    seeds = jnp.asarray(table.columns["seed"][chunk.runs[:, 0]], jnp.uint32)
    return seeds, params, train.make_groups(seeds, static)


def run_batched(table, chunk, steps=STEPS, formulation="auto"):
    """Runs a chunk for ``steps`` steps; returns run ids in layout order, state, metrics."""
    assert not (chunk.runs == PAD).any()
    static = dataclasses.replace(chunk.static, formulation=formulation)
    _, params, groups = chunk_data(table, chunk, static)
    state = train.init_state(params, groups, static)
    # As the engine runs a chunk: its Gram matrices (kernel formulation) built once, outside.
    gram = train.build_gram(state.mask, groups, static)
    state, metrics = train.advance(state, params, groups, jnp.int32(steps), static, gram)
    return chunk.runs.reshape(-1), jax.device_get(state), jax.device_get(metrics)


GD_SETS = ("padded-defaults", "kou-gd-bias")
#: Every option set; plain GD in both of its formulations (``Static.kernel_step``).
CASES = [(name, "auto") for name in OPTION_SETS if name not in GD_SETS] + [
    (name, formulation) for name in GD_SETS for formulation in ("direct", "kernel")]


@pytest.mark.parametrize("name, formulation", CASES)
def test_batched_runs_equal_reference_runs(name, formulation):
    _, table, chunk = build(OPTION_SETS[name])
    ids, state, metrics = run_batched(table, chunk, formulation=formulation)
    assert len(ids) >= 4
    # Check a sample of the batch against the (slow) reference.
    picked = np.random.default_rng(0).choice(len(ids), min(len(ids), 5), replace=False)
    for pos in picked:
        row = table.row(ids[pos])
        ref = Reference(row)
        params = ref.fit(STEPS)
        m, d = row["width"], row["d"]
        w = state.net.w[pos]
        np.testing.assert_allclose(w[:, :m, :d], np.asarray(params["w"]) * ref.mask,
                                   rtol=1e-10, atol=1e-13)
        assert np.all(w[:, m:, :] == 0) and np.all(w[:, :, d:] == 0)  # padding stays empty
        if row["bias"]:
            np.testing.assert_allclose(state.net.b[pos][:, :m], params["b"], rtol=1e-10,
                                       atol=1e-13)
        expected = ref.metrics(params)
        for key, value in expected.items():
            np.testing.assert_allclose(getattr(metrics, key)[pos], value, rtol=1e-10,
                                       atol=1e-12, err_msg=f"{key} of run {row}")


def test_training_makes_progress_and_metrics_are_not_trivial():
    _, table, chunk = build(OPTION_SETS["padded-defaults"])
    _, _, before = run_batched(table, chunk, steps=0)
    _, _, after = run_batched(table, chunk, steps=STEPS)
    assert np.all(after.train_loss < before.train_loss)
    assert np.all(after.noise_memorization > before.noise_memorization)
    assert np.allclose(before.signal_learning_pos, 0) and np.allclose(before.noise_memorization, 0)


def test_a_class_without_signal_filters_learns_exactly_plus_zero():
    """Pruned to no filter on the signal, a class's signal learning is 0, and +0.0 (its sign
    made it -0.0 in ``results.csv``)."""
    _, table, chunk = build({"prune": {"fraction": 0.99}})
    _, state, metrics = run_batched(table, chunk)
    _, params, _ = chunk_data(table, chunk, chunk.static)
    stats = jax.device_get(train.mask_stats(state, params, chunk.static))
    for side in ("pos", "neg"):
        learned = getattr(metrics, f"signal_learning_{side}")
        none = getattr(stats, f"signal_filters_{side}") == 0
        assert none.any()
        assert np.all(learned[none] == 0) and not np.signbit(learned[none]).any()


def single_run(name="adam-orthogonal", index=0):
    """One run's per-run inputs, taken out of the batch, for gradient checks."""
    _, table, chunk = build(OPTION_SETS[name])
    static = dataclasses.replace(chunk.static, groups=1, group_size=1)
    run_id = chunk.runs[0, index]
    row = table.row(run_id)
    cols = {k: v[[run_id]] for k, v in table.columns.items()}
    params = jax.tree.map(jnp.asarray, run_params_from_table(cols, static.float_dtype))
    groups = train.make_groups(jnp.asarray([row["seed"]], jnp.uint32), static)
    state = train.init_state(params, groups, static)
    p = jax.tree.map(lambda a: a[0], params)
    g = jax.tree.map(lambda a: a[0], groups)
    net = jax.tree.map(lambda a: a[0], state.net)
    return row, static, p, g, net, state.mask[0]


@pytest.mark.parametrize("name", ["adam-orthogonal", "kou-exact-momentum"])
def test_gradient_matches_reference_grad_and_finite_differences(name):
    row, static, p, g, net, mask = single_run(name)
    # Move away from the initialization so every filter is active.
    rng = np.random.default_rng(0)
    w = np.asarray(net.w) + 0.05 * rng.standard_normal(net.w.shape) * np.asarray(mask)
    net = Network(jnp.asarray(w), net.b)

    def engine_loss(n):
        return train.gradient(n, p, g, static)[0]

    grad = train.gradient(net, p, g, static)[1]
    ref = Reference(row)
    params = {"w": net.w}
    if net.b is not None:
        params["b"] = net.b
    ref_grad = jax.grad(lambda q: ref.loss(q, ref.train))(params)
    np.testing.assert_allclose(engine_loss(net), ref.loss(params, ref.train), rtol=1e-12)
    np.testing.assert_allclose(np.where(mask, grad.w, 0), ref_grad["w"], rtol=1e-9,
                               atol=1e-14)
    if net.b is not None:
        np.testing.assert_allclose(grad.b, ref_grad["b"], rtol=1e-9, atol=1e-14)

    # Central finite differences at a few kept weights.
    kept = np.argwhere(np.asarray(mask))
    for j, r, k in kept[rng.choice(len(kept), 5, replace=False)]:
        eps = 1e-6
        bump = np.zeros_like(w)
        bump[j, r, k] = eps
        up = engine_loss(Network(net.w + bump, net.b))
        down = engine_loss(Network(net.w - bump, net.b))
        np.testing.assert_allclose((up - down) / (2 * eps), grad.w[j, r, k], rtol=1e-5,
                                   atol=1e-10)


def test_pruned_weights_stay_exactly_zero_for_every_optimizer():
    for optimizer in ("gd", "momentum", "adam"):
        raw = dict(OPTION_SETS["padded-defaults"], train={"optimizer": optimizer})
        _, table, chunk = build(raw)
        _, state, _ = run_batched(table, chunk, steps=30)
        w, mask = state.net.w, state.mask
        assert np.all(w[~mask] == 0.0)
        assert np.count_nonzero(w[mask]) == mask.sum()  # and the kept weights did move


def assert_advance_of_no_steps_is_evaluate(params, groups, static):
    """``advance`` of 0 steps leaves a fresh state as it was, bit for bit, and gives
    ``evaluate``'s metrics: the engine takes a chunk's metrics at step 0 from it."""
    state = train.init_state(params, groups, static)
    want = jax.device_get(train.evaluate(state, params, groups, static))
    before = jax.device_get(state)
    gram = train.build_gram(state.mask, groups, static)
    after, got = jax.device_get(train.advance(state, params, groups, jnp.int32(0), static,
                                              gram))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(want.train_loss)).max() > 0


@pytest.mark.parametrize("name, formulation", CASES)
def test_advance_of_no_steps_is_evaluate(name, formulation):
    """Step 0's metrics from ``advance`` (one program fewer a chunk), in float64."""
    _, table, chunk = build(OPTION_SETS[name])
    static = dataclasses.replace(chunk.static, formulation=formulation)
    _, params, groups = chunk_data(table, chunk, static)
    assert_advance_of_no_steps_is_evaluate(params, groups, static)


def test_new_swept_values_do_not_recompile():
    base = dict(OPTION_SETS["padded-defaults"])
    _, table, chunk = build(base)
    run_batched(table, chunk)
    compiled = train.advance._cache_size()
    changed = dict(base, prune={"fraction": [0.1, 0.9]},
                   data=dict(base["data"], signal_norm=5.0, noise_std=0.7, label_flip=0.1),
                   model=dict(base["model"], init_std=0.02), train={"learning_rate": 0.3})
    _, table2, chunk2 = build(changed)
    assert chunk2.static == chunk.static
    run_batched(table2, chunk2)
    assert train.advance._cache_size() == compiled


@pytest.mark.parametrize("formulation", ["direct", "kernel"])
def test_a_run_does_not_depend_on_its_batch_or_layout(formulation):
    sweep_sections = OPTION_SETS["padded-defaults"]
    _, table, chunk = build(sweep_sections)
    ids, state, metrics = run_batched(table, chunk, formulation=formulation)
    # The same runs, one per chunk (G = S = 1) or in a different layout.
    for max_runs in (1, 3):
        for small in plan_chunks(table, 2**34, max_runs=max_runs, max_buckets=1):
            real = small.runs.reshape(-1)
            if (real == PAD).any():
                continue
            sub_ids, sub_state, sub_metrics = run_batched(table, small,
                                                          formulation=formulation)
            for pos, run_id in enumerate(sub_ids):
                full = int(np.flatnonzero(ids == run_id)[0])
                np.testing.assert_allclose(sub_state.net.w[pos], state.net.w[full],
                                           rtol=1e-12, atol=1e-15)
                np.testing.assert_allclose(sub_metrics.test_loss[pos],
                                           metrics.test_loss[full], rtol=1e-12)


@pytest.mark.parametrize("name", GD_SETS)
@pytest.mark.parametrize("max_runs", [None, 3])
@pytest.mark.parametrize("formulation", ["direct", "kernel"])
@pytest.mark.parametrize("block_bytes", [1, train.UNBLOCKED])
def test_gd_update_in_blocks_equals_one_block(name, max_runs, formulation, block_bytes):
    """GD's update runs over W in blocks (of runs when S = 1, of groups otherwise), the
    direct step over blocks of groups and the kernel formulation's steps over blocks of runs
    or groups; blocks smaller than a run's weights (one run, one group a block) and no blocks
    at all (an accelerator's ``_unblocked_step``, the support folded into both products) still
    give ``advance``'s numbers."""
    _, table, _ = build(OPTION_SETS[name])
    chunk = plan_chunks(table, 2**34, max_runs=max_runs, max_buckets=1)[0]
    _, state, _ = run_batched(table, chunk, formulation=formulation)
    static = dataclasses.replace(chunk.static, formulation=formulation)
    _, params, groups = chunk_data(table, chunk, static)
    blocked = jax.jit(functools.partial(train._gd_loop, block_bytes=block_bytes,
                                        group_block_bytes=block_bytes, native=False,
                                        kernel_block_bytes=block_bytes),
                      static_argnames="static")
    state0 = train.init_state(params, groups, static)
    small = blocked(state0, params, groups, jnp.int32(STEPS), static=static)
    np.testing.assert_allclose(small.net.w, state.net.w, rtol=1e-12, atol=1e-15)
    if state.net.b is not None:
        np.testing.assert_allclose(small.net.b, state.net.b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout, n", [("seeds", 100), ("shared", 100), ("seeds", 10)])
def test_an_accelerator_runs_each_step_unblocked(layout, n):
    """Lowered for a GPU, the step program has one loop, over the steps: no loop over blocks
    of runs or groups (each block would be a kernel launch of its own). The CPU's program
    keeps its blocks. n = 10 runs the kernel formulation."""
    case = bench.Case("x", d=200, n=n, width=8, runs=64, layout=layout)
    static = bench.case_static(case, formulation="auto")
    params, seeds = bench.case_inputs(static)
    groups = jax.eval_shape(lambda s: train.make_groups(s, static), seeds)
    state = jax.eval_shape(lambda p, g: train.init_state(p, g, static), params, groups)
    gram = train.build_gram.eval_shape(state.mask, groups, static)
    assert static.kernel_step == (n == 10)

    def loops(platform, block_bytes):
        steps = jax.jit(functools.partial(train._gd_loop, block_bytes=block_bytes,
                                          group_block_bytes=block_bytes, native=False,
                                          kernel_block_bytes=block_bytes),
                        static_argnames="static")
        lowered = steps.trace(state, params, groups, jnp.int32(4), static=static,
                              gram=gram).lower(lowering_platforms=(platform,))
        return lowered.as_text().count("stablehlo.while")

    assert loops("cuda", 1024) == 1
    # On the CPU one loop over blocks of groups (seeds) or runs (shared; the kernel
    # formulation's update at the end of a segment) follows the steps' loop; the kernel
    # formulation's steps run inside a loop over blocks of runs or groups.
    assert loops("cpu", 1024) == (3 if static.kernel_step else 2)


def chunk_inputs(name, max_runs):
    """``(static, params, groups)`` of the first chunk of an option set, at most ``max_runs``
    runs a chunk."""
    _, table, _ = build(OPTION_SETS[name])
    chunk = plan_chunks(table, 2**34, max_runs=max_runs, max_buckets=1)[0]
    _, params, groups = chunk_data(table, chunk, chunk.static)
    return chunk.static, params, groups


@pytest.mark.parametrize("name", ["padded-defaults", "kou-gd-bias", "adam-orthogonal"])
@pytest.mark.parametrize("max_runs", [None, 3])
def test_initial_projections_in_blocks_equal_w0_times_z(name, max_runs):
    """The memorization's ``<W(0)[j,r], z_i>``, formed in blocks of runs without W(0), equals
    the product of the materialized W(0) (the initial state's weights) with the noise."""
    static, params, groups = chunk_inputs(name, max_runs)
    state0 = train.init_state(params, groups, static)
    S, G, m, n, d = static.groups, static.group_size, static.width, static.n, static.d
    w0 = np.asarray(state0.net.w).reshape(S, G, 2, m, d)
    expected = np.einsum("sgjmd,snd->sgnjm", w0, np.asarray(groups.train.noise))
    for block_bytes in (1, train.BLOCK_BYTES):
        got = jax.jit(functools.partial(train._initial_projections, block_bytes=block_bytes),
                      static_argnames="static")(state0.mask, params, groups, static=static)
        np.testing.assert_allclose(got, expected.reshape(S * G, n, 2, m), rtol=1e-12,
                                   atol=1e-15)


@pytest.mark.parametrize("name", ["padded-defaults", "kou-gd-bias"])
@pytest.mark.parametrize("max_runs", [None, 3])
def test_evaluation_in_blocks_equals_one_block(name, max_runs):
    """Metrics evaluated one run (or one group) a block equal those of one block of all runs,
    which ``test_batched_runs_equal_reference_runs`` checks against the reference."""
    static, params, groups = chunk_inputs(name, max_runs)
    state = train.train_steps(train.init_state(params, groups, static), params, groups,
                              jnp.int32(STEPS), static=static)
    evaluate = jax.jit(train._evaluate, static_argnames=("static", "block_bytes"))
    whole = evaluate(state, params, groups, static=static, block_bytes=2**40)
    blocked = evaluate(state, params, groups, static=static, block_bytes=1)
    assert whole.train_loss.shape == (static.groups * static.group_size,)
    for key, value in whole._asdict().items():
        np.testing.assert_allclose(getattr(blocked, key), value, rtol=1e-12, atol=1e-15,
                                   err_msg=key)


def test_evaluation_one_group_a_block_copies_no_state_or_data():
    """At the quick sweep's sizes, 7 seeds, a block holds one group (its 2030 examples are
    16 MB): the evaluation's temporaries are one block's, not a copy of every argument (which
    XLA:CPU made to feed a loop over arrays reshaped to (blocks, 1, ...)). Compiled only."""
    case = bench.Case("quickstart", d=2000, n=30, width=20, runs=7, layout="seeds", n_test=2000)
    static = bench.case_static(case)
    examples = (static.n + static.n_test) * static.d * 4
    assert train._run_blocks(static, train.EVAL_BLOCK_BYTES, examples) == (0, 1)
    params, seeds = bench.case_inputs(static)
    groups = jax.eval_shape(functools.partial(train.make_groups, static=static), seeds)
    state = jax.eval_shape(functools.partial(train.init_state, static=static), params, groups)
    memory = train.evaluate.lower(state, params, groups, static=static).compile() \
        .memory_analysis()
    assert memory.temp_size_in_bytes < 0.3 * memory.argument_size_in_bytes


@pytest.mark.parametrize("layout", ["shared", "seeds"])
def test_native_direct_segment_updates_the_donated_weights_where_they_lie(layout):
    """The direct formulation's native segment (d = 1000, n = 100) writes the donated W in
    place: the program's temporaries hold no copy of it (handed W through a reshape, XLA
    copied W into a fresh buffer and back every segment). Compiled only, for the CPU."""
    assert cpu_update.available(), cpu_update.status()
    case = bench.Case("paper-d1000", d=1000, n=100, width=50, runs=8, layout=layout,
                      formulation="direct")
    static = bench.case_static(case)
    params, seeds = bench.case_inputs(static)
    groups = jax.eval_shape(functools.partial(train.make_groups, static=static), seeds)
    state = jax.eval_shape(functools.partial(train.init_state, static=static), params, groups)
    with jax.default_device(jax.devices("cpu")[0]):
        memory = train.train_steps.lower(state, params, groups, jnp.int32(0), static=static) \
            .compile().memory_analysis()
    assert memory.temp_size_in_bytes < 0.1 * state.net.w.size * state.net.w.dtype.itemsize


def test_compiler_options_only_for_cpu_only_installs_of_jaxlib_0_9_on(monkeypatch):
    import pkgutil

    plain = [(None, "numpy", True), (None, "jax", True)]
    monkeypatch.setattr(pkgutil, "iter_modules", lambda: iter(plain))
    monkeypatch.setattr(train.jaxlib, "__version__", "0.10.2")
    assert train._compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
    monkeypatch.setattr(train.jaxlib, "__version__", "0.8.3")
    assert train._compiler_options() == {}
    monkeypatch.setattr(train.jaxlib, "__version__", "0.9.0")
    monkeypatch.setattr(pkgutil, "iter_modules",
                        lambda: iter(plain + [(None, "jax_cuda12_plugin", True)]))
    assert train._compiler_options() == {}


def test_formulation_choice_and_unknown_names():
    _, _, chunk = build(OPTION_SETS["padded-defaults"])
    static = chunk.static  # n = 8, d = 40, 12 steps, eval_every = 5: kernel
    assert static.kernel_step
    for change in (dict(eval_every=1), dict(steps=7), dict(d=31), dict(formulation="direct")):
        assert not dataclasses.replace(static, **change).kernel_step, change
    assert dataclasses.replace(static, d=31, formulation="kernel").kernel_step
    with pytest.raises(ValueError, match="'kernal' is not one of"):
        dataclasses.replace(chunk.static, formulation="kernal").kernel_step


def test_the_kernel_formulation_where_it_pays(monkeypatch):
    """Full Gram matrices where they are at most twice the weights; read as triangles by the
    CPU's native products, from d = 3 n (the paper's n = 100, d = 1000) and 3 n steps."""
    assert spec.kernel_pays(100, 1000, 300, triangles=True)
    assert not spec.kernel_pays(100, 1000, 299, triangles=True)
    assert not spec.kernel_pays(100, 1000, 1500, triangles=False)
    assert spec.kernel_pays(100, 300, 300, triangles=True)
    assert not spec.kernel_pays(100, 299, 1500, triangles=True)
    assert spec.kernel_pays(100, 5000, 100, triangles=False)
    assert not spec.kernel_pays(100, 5000, 99, triangles=False)
    assert spec.kernel_pays(8, 32, 8, False) and not spec.kernel_pays(8, 23, 100, True)
    static = bench.case_static(bench.Case("paper-d1000", 1000, 100, 50, 4, "seeds"))
    for triangles in (True, False):
        monkeypatch.setattr(cpu_update, "gram_triangles", lambda dtype: triangles)
        assert static.kernel_step == triangles


@pytest.mark.parametrize("name, formulation", [("padded-defaults", "direct"),
                                               ("padded-defaults", "kernel"),
                                               ("adam-orthogonal", "auto")])
def test_every_matrix_product_has_the_static_precision(name, formulation):
    """XLA's default precision is TF32 on recent NVIDIA GPUs (bfloat16 passes on TPUs): every
    matrix product of every program asks for full float32 (HIGHEST) by default, and for TF32
    (HIGH) with ``matmul_precision = "tensorfloat32"`` (on the CPU the same numbers, so only
    the programs can show it), on the CPU and on a GPU. ``static`` is passed by position and
    by keyword."""
    _, table, chunk = build(OPTION_SETS[name])
    static = dataclasses.replace(chunk.static, dtype="float32", formulation=formulation)
    assert static.matmul_precision == "float32"
    seeds, params, groups = chunk_data(table, chunk, static)
    state = train.init_state(params, groups, static)
    gram = train.build_gram(state.mask, groups, static)
    steps = jnp.int32(3)
    for precision, expected in (("float32", "HIGHEST"), ("tensorfloat32", "HIGH")):
        static = dataclasses.replace(static, matmul_precision=precision)
        programs = [train.make_groups.lower(seeds, static),
                    train.init_state.lower(params, groups, static),
                    train.mask_stats.lower(state, params, static=static),
                    train.build_gram.lower(state.mask, groups, static),
                    train.evaluate.lower(state, params, groups, static=static),
                    train.train_steps.lower(state, params, groups, steps, static, gram),
                    train.advance.lower(state, params, groups, steps, static, gram),
                    # The accelerator's step (``_unblocked_step``), lowered for a GPU.
                    train.train_steps.trace(state, params, groups, steps, static, gram).lower(
                        lowering_platforms=("cuda",))]
        dots = [line for program in programs for line in program.as_text().splitlines()
                if "dot_general" in line]
        assert len(dots) >= 5
        assert all(f"precision = [{expected}, {expected}]" in dot for dot in dots), dots
