"""``jaxprune bench``: the harness runs, counts FLOPs by the formula, and every implementation it
times computes the same step as ``train.advance`` (speed itself is never asserted here)."""

import copy
import importlib.machinery
import importlib.util
import json
import mmap
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import bench, cli, cpu_update, train
from jaxprune.config import load_sweep

TINY = dict(size="tiny", d=40, n=8, width=4, n_test=16)


def tiny_case(runs=4, layout="shared", dtype="float64"):
    return bench.Case(**TINY, runs=runs, layout=layout, dtype=dtype)


def advanced(case, steps, **static_overrides):
    static = bench.case_static(case, **static_overrides)
    params, seeds = bench.case_inputs(static)
    runner = bench.AdvanceRunner(static, params, seeds)
    state0, groups = runner.initial()
    copy = jax.tree.map(lambda a: a.copy(), state0)
    runner.run(steps)
    return static, params, groups, copy, runner


@pytest.mark.parametrize("layout", ["shared", "seeds"])
def test_timed_steps_are_advance_without_its_evaluation(layout):
    case = tiny_case(runs=4, layout=layout)
    static, params, groups, state0, runner = advanced(case, 6)
    other = bench.AdvanceRunner(static, params, bench.case_inputs(static)[1])
    other.run_steps(6)
    np.testing.assert_array_equal(other.weights(), runner.weights())
    np.testing.assert_array_equal(np.asarray(other.state.diverged),
                                  np.asarray(runner.state.diverged))


def test_quickstart_sizes_are_those_of_the_quick_sweep():
    sweep = load_sweep(Path(__file__).parents[1] / "sweeps" / "quickstart.toml")
    assert bench.SIZE_SETS["quickstart"] == tuple(sweep.values[k][0] for k in ("d", "n", "width"))


def test_flop_formula():
    static = bench.case_static(bench.Case("x", d=1000, n=100, width=50, runs=16,
                                          layout="shared"))
    assert bench.step_flops(static) == 8 * 50 * 100 * 1000


@pytest.mark.parametrize("layout", ["shared", "seeds"])
def test_plain_loop_matches_advance(layout):
    case = tiny_case(runs=4, layout=layout)
    static, params, groups, state0, runner = advanced(case, 7)
    loop = bench.LoopRunner(static, params, state0, groups)
    loop.run(7)
    assert np.all(np.isfinite(runner.weights()))
    assert np.abs(runner.weights()).max() > 0
    np.testing.assert_allclose(loop.weights(), runner.weights(), rtol=1e-10, atol=1e-13)


def test_plain_loop_matches_advance_float32():
    case = tiny_case(runs=4, layout="shared", dtype="float32")
    static, params, groups, state0, runner = advanced(case, 5)
    loop = bench.LoopRunner(static, params, state0, groups)
    loop.run(5)
    np.testing.assert_allclose(loop.weights(), runner.weights(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cuda", [False, True])
def test_torch_is_skipped_on_a_gpu_it_cannot_see(monkeypatch, cuda):
    fake = types.ModuleType("torch")  # a stand-in: the test needs no torch installed
    fake.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    fake.__version__ = "0.0+cpu"
    fake.cuda = types.SimpleNamespace(is_available=lambda: cuda)
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    torch_step, why = bench.load_torch_step()
    if cuda:
        assert why is None and torch_step.__name__ == "TorchStep"
    else:
        assert torch_step is None and why.startswith("torch 0.0+cpu sees no GPU")


@pytest.mark.parametrize("layout", ["shared", "seeds"])
@pytest.mark.parametrize("options", [
    {},
    {"activation_power": 1.0, "output_scale": "sum", "patch_pool": "mean",
     "signal_support": 3},
])
def test_torch_step_matches_advance(layout, options):
    pytest.importorskip("torch")  # the optional ``bench`` extra
    torch_step, why = bench.load_torch_step()
    assert torch_step is not None, why
    case = tiny_case(runs=6, layout=layout)
    static, params, groups, state0, runner = advanced(case, 9, **options)
    impl = bench.TorchRunner(torch_step, static, params, state0, groups, threads=1)
    impl.run(9)
    np.testing.assert_allclose(impl.weights(), runner.weights(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(impl.impl.loss(), np.asarray(runner.metrics.train_loss),
                               rtol=1e-9)
    # Pruned weights stay exactly zero.
    assert np.all(impl.weights()[~np.asarray(state0.mask)] == 0.0)


@pytest.mark.parametrize("layout", ["shared", "seeds"])
@pytest.mark.parametrize("power", [3.0, 1.0])
def test_other_torch_forms_match_advance(layout, power):
    """``TorchStep.compiled`` (the bench's ``torch-compiled``) and
    ``benchmarks/torch_forms.py``'s autodiff under ``vmap`` train as ``train.advance`` does."""
    pytest.importorskip("torch")
    torch_step, why = bench.load_torch_step()
    assert torch_step is not None, why
    path = Path(__file__).parents[1] / "benchmarks" / "torch_forms.py"
    spec = importlib.util.spec_from_file_location("torch_forms", path)
    forms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(forms)
    case = tiny_case(runs=6, layout=layout)
    static, params, groups, state0, runner = advanced(case, 9, activation_power=power)
    compiled = bench.TorchRunner(torch_step, static, params, state0, groups, threads=1,
                                 compiled=True)
    autodiff = bench.TorchRunner(torch_step, static, params, state0, groups, threads=1)
    autodiff.step = forms.vmap_step(autodiff.impl)
    for impl in (compiled, autodiff):
        impl.run(9)
        np.testing.assert_allclose(impl.weights(), runner.weights(), rtol=1e-9, atol=1e-12)


def test_tables_compare_with_the_fastest_torch_form(monkeypatch):
    monkeypatch.setitem(bench.SIZE_SETS, "tiny", (TINY["d"], TINY["n"], TINY["width"]))
    result = bench.run(quick=True, sizes=["tiny"], runs=[2], layouts=["shared"],
                       impls=("advance",), repeats=1, target_s=0.001, memory=False,
                       compiles=False, peak_sizes=(128,), bandwidth_bytes=1 << 20,
                       log=lambda m: None)
    row = result["cases"][0]
    advance = row["impls"]["advance"]["run_steps_per_s"]
    row["impls"]["torch"] = {"run_steps_per_s": advance / 4}
    row["impls"]["torch-compiled"] = {"run_steps_per_s": advance / 2}
    assert f"| {bench._fmt(advance / 2)} (compiled) | 2.00 |" in bench.format_markdown(result)
    row["impls"]["torch"]["run_steps_per_s"] = advance / 1.5
    assert f"| {bench._fmt(advance / 1.5)} (bmm) | 1.50 |" in bench.format_markdown(result)
    del row["impls"]["torch-compiled"]
    row["skipped"] = {"torch-compiled": "torch.compile failed: no compiler"}
    text = bench.format_markdown(result)
    assert f"| {bench._fmt(advance / 1.5)} | 1.50 |" in text
    assert "\ntorch-compiled: torch.compile failed: no compiler" in text


def test_a_torch_compile_that_fails_leaves_that_form_out(monkeypatch):
    class Step:  # stands in for TorchStep (the test needs no torch): a step that does nothing
        device = types.SimpleNamespace(type="cpu")

        def __init__(self, w, *args, **kwargs):
            self.w = np.asarray(w)

        def step(self):
            pass

        def compiled(self):
            def fail():
                raise RuntimeError("no C++ compiler")
            return fail

    monkeypatch.setattr(bench, "load_torch_step", lambda: (Step, None))
    result = bench.measure_case(tiny_case(runs=2), impls=("advance", "torch", "torch-compiled"),
                                repeats=1, target_s=0.001)
    assert set(result["impls"]) == {"advance", "torch"}
    assert result["skipped"] == {
        "torch-compiled": "torch.compile failed: RuntimeError: no C++ compiler"}


@pytest.mark.parametrize("argv, status, stream", [
    (["paper-d1000", "12"], None, None),
    (["paper-d1000", "--help"], 0, "out"),
    (["paper-d9999", "12"], 2, "err"),
    (["paper-d1000", "0"], 2, "err"),
])
def test_benchmark_scripts_read_their_arguments(monkeypatch, capsys, argv, status, stream):
    monkeypatch.setattr(sys, "argv", ["script.py", *argv])
    valid = lambda a: a[0] in bench.SIZE_SETS and bench.positive_ints(a[1:])  # noqa: E731
    if status is None:
        assert bench.script_args("usage: script.py SIZE N", valid) == argv
        return
    with pytest.raises(SystemExit) as exit_:
        bench.script_args("usage: script.py SIZE N", valid)
    assert exit_.value.code == status
    assert getattr(capsys.readouterr(), stream) == "usage: script.py SIZE N\n"


def test_quick_harness_runs_on_tiny_sizes(monkeypatch, capsys):
    monkeypatch.setitem(bench.SIZE_SETS, "tiny", (TINY["d"], TINY["n"], TINY["width"]))
    result = bench.run(quick=True, sizes=["tiny"], runs=[2, 4], impls=("advance", "loop"),
                       repeats=1, target_s=0.001, memory=False, compiles=False,
                       peak_sizes=(128,), bandwidth_bytes=1 << 20,
                       log=lambda m: None)
    assert len(result["cases"]) == 4  # two R, two layouts
    for r in result["cases"]:
        assert r["flop_per_run_step"] == 8 * TINY["width"] * TINY["n"] * TINY["d"]
        for impl in ("advance", "loop"):
            v = r["impls"][impl]
            assert v["run_steps_per_s"] > 0
            np.testing.assert_allclose(
                v["gflops"], v["run_steps_per_s"] * r["flop_per_run_step"] / 1e9, rtol=1e-12)
    text = bench.format_markdown(result)
    assert "| tiny (40, 8, 4) | shared | 2 | 1 x 2 |" in text
    assert "| tiny (40, 8, 4) | seeds | 4 | 4 x 1 |" in text
    assert "repeats, each from a settled process" in text  # on the CPU (``_settle``)
    assert {r["case"]["n_test"] for r in result["cases"]} == {100}  # Case's default
    assert "one evaluation of the row's R runs on 100 test examples" in text
    for r in result["cases"]:  # the square product timed beside each case, and its share
        share = 100 * r["impls"]["advance"]["gflops"] / r["peak_gflops"]
        assert f"| {r['peak_gflops']:.1f} | {share:.0f} % |" in text
        adv = r["impls"]["advance"]  # the kernel's share of its time and its page faults
        assert 0.0 <= adv["system_share"] <= 1.0 and adv["minor_faults_per_step"] >= 0.0
        assert (f"| {100 * adv['system_share']:.1f} % / "
                f"{adv['minor_faults_per_step']:,.0f} |") in text
    # The tiny sizes run the kernel formulation: its Gram matrices' traffic against the read
    # bandwidth (numpy's threads on the CPU and XLA's sum, each of the 1 MiB array).
    bandwidth = result["bandwidth"]
    assert bandwidth["start"]["bytes"] == 1 << 20
    assert bandwidth["best_gbps"] == max(bandwidth[w][k] for w in ("start", "end")
                                         for k in ("numpy_gbps", "xla_gbps"))
    for r in result["cases"]:
        c = r["case"]
        assert bench.case_static(bench.Case(**c)).kernel_step
        k = c["n"] + 1  # a filter's matrix of Z' = [Z; 1_S]: its upper triangle where the
        matrix = k * (k + 1) // 2 if cpu_update.gram_triangles() else k * k  # native step runs
        assert r["gram_bytes"] == c["runs"] * 2 * c["width"] * matrix * 4  # float32
        gbps = r["gram_bytes"] / r["impls"]["advance"]["step_s"] / 1e9
        assert (f"| tiny | {c['layout']} | {c['runs']} | {r['gram_bytes'] / 1e6:,.0f} "
                f"| {gbps:.1f} | {100 * gbps / bandwidth['best_gbps']:.0f} % |") in text
    json.dumps(result, default=str)
    # The memory table: "rest" is the advance phase's peak over its baseline less state,
    # data, Gram matrices and XLA's temporaries: 60 - (24 + 6 + 6 + 1.5) MB.
    memory = {"case": result["cases"][0]["case"], "state_bytes": 24e6, "data_bytes": 6e6,
              "baseline": 4e8, "advance_peak": 4.6e8, "gram_bytes": 6e6, "temp_bytes": 1.5e6,
              "steps_ratio": 1.1, "eval_ratio": 1.2, "advance_ratio": 2.0, "setup_ratio": 1.0,
              "gram_ratio": 0.2, "temp_ratio": 0.05}
    before = {k: v for k, v in memory.items() if k not in ("temp_bytes", "temp_ratio")}
    result["memory"] = [memory, before, {"case": memory["case"], "error": "out of memory"}]
    rows = [line for line in bench.format_markdown(result).splitlines()
            if line.startswith("| tiny | shared |") and line.count("|") == 14]  # 13 columns
    assert rows == [
        "| tiny | shared | 2 | 24 | 6 | 400 | 1.10 | 1.20 | 2.00 | 1.00 | 0.20 | 0.05 | 22.5 |",
        "| tiny | shared | 2 | 24 | 6 | 400 | 1.10 | 1.20 | 2.00 | 1.00 | 0.20 | n/a | n/a |",
        "| tiny | shared | 2 | error: out of memory | | | | | | | | | |"]
    del result["memory"]
    # On an accelerator the peak is XLA's alone (numpy's products would run on the host).
    assert "blas_per_size_gflops" in result["peak"]["start"]
    gpu = copy.deepcopy(result)
    gpu["machine"].update(backend="gpu", device_kind="NVIDIA H200")
    gpu["settings"]["settled"] = False
    for when in ("start", "end"):
        del gpu["peak"][when]["blas_per_size_gflops"]
    text = bench.format_markdown(gpu)
    assert "Machine: NVIDIA H200 beside" in text
    assert "by XLA's jnp.dot, measured" in text and "peak beside: XLA's square" in text
    assert "settled" not in text


def test_the_formulation_can_be_forced(monkeypatch):
    """``--formulation direct`` times the step whose FLOPs are counted where a sweep would
    run the kernel formulation (as at these sizes)."""
    monkeypatch.setitem(bench.SIZE_SETS, "tiny", (TINY["d"], TINY["n"], TINY["width"]))
    auto, direct = (bench.default_cases(True, ["tiny"], [2], ["shared"], formulation=f)[0]
                    for f in ("auto", "direct"))
    assert bench.case_static(auto).kernel_step and not bench.case_static(direct).kernel_step
    r = bench.measure_case(direct, ("advance",), repeats=1, target_s=0.001)
    assert r["formulation"] == "direct" and r["gram_s"] is None
    assert cli.build_parser().parse_args(["bench", "--formulation", "direct"]).formulation \
        == "direct"


@pytest.mark.parametrize("extra, passes", [([], 2), (["--formulation", "kernel"], 1)])
def test_run_bench_adds_a_pass_of_the_direct_step(tmp_path, extra, passes):
    """``benchmarks/run_bench.sh`` times the direct step too, unless told a formulation."""
    fake = tmp_path / "python"  # records its arguments instead of measuring
    fake.write_text('#!/bin/sh\necho "$@" >> "$LOG"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), MAX_LOAD="1000", LOG=str(tmp_path / "log"))
    root = Path(__file__).parents[1]
    subprocess.run(["bash", str(root / "benchmarks" / "run_bench.sh"), "--quick", *extra],
                   env=env, check=True, capture_output=True)
    calls = (tmp_path / "log").read_text().splitlines()
    assert len(calls) == passes
    assert all(call.startswith("-m jaxprune.cli bench --quick ") for call in calls)
    if passes == 2:
        assert "--formulation direct --no-memory --no-compiles" in calls[1]
        assert calls[1].endswith("-direct.md")


def test_fastest_size_prefers_the_library_the_cpu_step_calls():
    peak = {"per_size_gflops": {1024: 90.0, 2048: 80.0},
            "blas_per_size_gflops": {1024: 70.0, 2048: 75.0}}
    assert bench.fastest_size(peak) == 2048
    del peak["blas_per_size_gflops"]
    assert bench.fastest_size(peak) == 1024


def test_timing_waits_for_the_process_s_spinning_threads():
    """A thread that keeps a core busy (as numpy's OpenBLAS does after a product) holds the
    next timed segment back until it stops; an idle process starts at once."""
    busy_until = time.perf_counter() + 0.3

    def spin():
        while time.perf_counter() < busy_until:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    bench._settle(timeout=5.0)
    assert not spinner.is_alive()
    assert time.perf_counter() >= busy_until
    spinner.join()
    start = time.perf_counter()
    bench._settle(timeout=5.0)
    assert time.perf_counter() - start < 2.5  # returned before its timeout: nothing spun


def test_timing_counts_each_call_s_page_faults():
    """``_interleaved`` gives each call's minor page faults and CPU times: a call that writes
    to 2,048 fresh pages (small pages: no transparent huge page may back them) takes a fault
    for each, a call that touches nothing next to none; ``_system_load`` puts them per step."""
    pages = 2048

    def touch():
        memory = mmap.mmap(-1, pages * mmap.PAGESIZE)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux's transparent huge pages
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        for offset in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            memory[offset] = 1
        memory.close()

    usage = {}
    times = bench._interleaved({"touch": touch, "idle": lambda: None}, 3, usage)
    assert [len(v) for v in (*times.values(), *usage.values())] == [3] * 4
    for system, user, faults in usage["touch"]:
        assert pages <= faults <= pages + 100 and system >= 0.0 and user >= 0.0
    assert max(faults for *_, faults in usage["idle"]) < 50
    load = bench._system_load(usage["touch"], steps=4)
    assert pages / 4 <= load["minor_faults_per_step"] <= (pages + 100) / 4
    assert 0.0 <= load["system_share"] <= 1.0
    assert bench._system_load([(1.0, 3.0, 10), (1.0, 1.0, 30)], 5) == {
        "system_share": 2.0 / 6.0, "minor_faults_per_step": 4.0}


def test_memory_profile_of_a_tiny_case():
    m = bench.memory_profile(tiny_case(runs=4, dtype="float32"))
    assert "error" not in m, m.get("error")
    static = bench.case_static(tiny_case(runs=4, dtype="float32"))
    state_bytes, data_bytes = bench.state_and_data_bytes(static)
    assert m["state_bytes"] == state_bytes
    assert m["data_bytes"] == data_bytes
    for phase in ("setup", "steps", "eval", "advance"):
        assert m[f"{phase}_peak"] >= m["baseline"] > 0
    # The tiny sizes run the kernel formulation: its Gram matrices are reported apart.
    assert static.kernel_step
    params, seeds = bench.case_inputs(static)
    groups = jax.eval_shape(lambda s: train.make_groups(s, static), seeds)
    state = jax.eval_shape(lambda p, g: train.init_state(p, g, static), params, groups)
    gram = train.build_gram.eval_shape(state.mask, groups, static)
    assert m["gram_bytes"] == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(gram)) > 0
    assert m["gram_ratio"] == m["gram_bytes"] / (state_bytes + data_bytes)
    # XLA's temporaries of one advance call, as its own compilation here reports them.
    advance = train.advance.lower(state, params, groups, jnp.int32(2), static=static,
                                  gram=gram).compile()
    assert m["temp_bytes"] == advance.memory_analysis().temp_size_in_bytes > 0
    assert m["temp_ratio"] == m["temp_bytes"] / (state_bytes + data_bytes)


def test_compile_count_of_a_d_sweep():
    out = bench.compile_count()
    assert out["d_values"] == 100
    assert out["planned_programs"] <= 4
    assert out["tiny_d_values"] == 100
    # What the plan promises is what JAX compiles.
    assert out["tiny_advance_compilations"] == out["tiny_planned_programs"] <= 4


def test_cli_has_bench_with_quick_mode():
    args = cli.build_parser().parse_args(["bench", "--quick", "--no-memory", "--runs", "16"])
    assert args.quick and args.no_memory and args.runs == [16]
    assert args.command == "bench"


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "-1"], "argument --repeats: '-1' is not an integer >= 1"),
    (["--repeats", "0"], "argument --repeats: '0' is not an integer >= 1"),
    (["--runs", "16", "0"], "argument --runs: '0' is not an integer >= 1"),
    (["--memory-runs", "x"], "argument --memory-runs: 'x' is not an integer >= 1"),
    (["--torch-threads", "0"], "argument --torch-threads: '0' is not an integer >= 1"),
    (["--target-seconds", "0"], "argument --target-seconds: '0' is not a positive number"),
    (["--target-seconds", "nan"], "argument --target-seconds: 'nan' is not a positive number"),
    (["--memory-cap-gb", "-3"], "argument --memory-cap-gb: '-3' is not a positive number"),
    (["--formulation", "kernal"], "argument --formulation: invalid choice: 'kernal'"),
])
def test_bad_bench_options_exit_2_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["bench", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_options_parse():
    args = cli.build_parser().parse_args(
        ["bench", "--repeats", "1", "--runs", "1", "4", "--target-seconds", "0.01",
         "--memory-cap-gb", "0.5", "--torch-threads", "1", "--memory-runs", "8"])
    assert (args.repeats, args.runs, args.target_seconds) == (1, [1, 4], 0.01)
    assert (args.memory_cap_gb, args.torch_threads, args.memory_runs) == (0.5, 1, [8])


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_an_output_file_that_cannot_be_written_fails_before_measuring(
        tmp_path, monkeypatch, capsys, option):
    def measure(*args, **kwargs):
        raise AssertionError("measured before checking the output files")

    monkeypatch.setattr(bench, "run", measure)
    for path, message in [(tmp_path / "missing" / "out", "does not exist"),
                          (tmp_path, "is a directory")]:
        with pytest.raises(SystemExit) as info:
            cli.main(["bench", "--quick", option, str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"jaxprune bench: error: argument {option}: ") and message in last
        assert "Traceback" not in err
    assert not (tmp_path / "missing").exists()


CACHE_PROBE = """
import sys
import jax
from jaxprune import bench, cli

def run(**kwargs):  # stands in for the measurements: one compile, then stop
    jax.jit(lambda x: x + 1).lower(1.0).compile()
    raise SystemExit(0)

bench.run = run
if sys.argv[1] == "bench":
    cli.main(["bench", "--quick", "--no-memory"])
run()
"""


@pytest.mark.parametrize("entry, cached", [("bench", False), ("plain", True)])
def test_bench_compiles_past_jax_s_persistent_cache(tmp_path, entry, cached):
    """With JAX's persistent cache configured, ``jaxprune bench`` still compiles (its compile
    times and counts are of compiles) and writes nothing there; a plain process does."""
    cache = tmp_path / "xla"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run([sys.executable, "-c", CACHE_PROBE, entry], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    entries = list(cache.glob("*")) if cache.exists() else []
    assert bool(entries) == cached, entries
