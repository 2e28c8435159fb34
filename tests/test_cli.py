"""The ``jaxprune`` command: exit codes and messages, printing, and a sweep end to end.

The subprocess tests run the installed console script (a fresh process imports jax: about 2 s
each), so only a few run that way; the rest call ``cli.main`` in-process.
"""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import jaxprune
from jaxprune import cli, cpu_update, engine, train
from jaxprune.config import load_sweep, sweep_from_dict
from jaxprune.plan import plan_chunks
from jaxprune.results import METRIC_COLUMNS, read_csv, results_columns

SCRIPT = Path(sys.executable).with_name("jaxprune")
JAXPRUNE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "jaxprune.cli"]

TINY_TOML = """\
name = "tiny"
[data]
d = 40
n = 8
n_test = 64
signal_norm = 3.0
[model]
width = 4
[prune]
fraction = [0.0, 0.5]
[train]
steps = 20
eval_every = 5
checkpoint_every = 10
learning_rate = 0.1
[sweep]
seeds = 2
"""

MEASURED = ("train_loss", "train_error", "test_loss", "test_error", "signal_learning",
            "noise_memorization", "signal_filters", "diverged")


def jaxprune_cmd(*args, cwd=None):
    return subprocess.run([*JAXPRUNE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line on stderr, no traceback.


@pytest.mark.parametrize("text, message", [
    ("[data\nd = 3\n", "not valid TOML: Expected ']' at the end of a table declaration "
                       "(at line 1, column 6)"),
    ("[model]\nwidht = 4\n", "model.widht: unknown field (did you mean 'width'?); allowed in "
                             "[model]: width, activation_power, output_scale, patch_pool, "
                             "bias, init, init_std"),
    ("[prune]\nfraction = [0.0, 1.0]\n", "prune.fraction: 1.0 is not allowed; allowed: a "
                                         "number in [0, 1)"),
], ids=["malformed", "unknown field", "impossible value"])
def test_run_bad_sweep_subprocess(tmp_path, text, message):
    bad = write(tmp_path / "bad.toml", text)
    proc = jaxprune_cmd("run", bad, "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr == f"jaxprune: error: {bad}: {message}\n"
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("[data]\nd = 2.5\n", "data.d: 2.5 is not an integer; allowed: an integer >= 1"),
    ("[sweep]\nseeds = 0\n", "sweep.seeds: count 0 gives an empty grid; allowed: a count (an "
                             "integer >= 1) or a list of distinct integers in [0, 2^31)"),
    ('preset = "kou"\n', "preset: unknown preset 'kou'; allowed: cao2022, kou2023"),
], ids=["float for an int", "seeds = 0", "unknown preset"])
def test_run_bad_sweep_in_process(tmp_path, capsys, text, message):
    bad = write(tmp_path / "bad.toml", text)
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"jaxprune: error: {bad}: {message}\n")


def test_run_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert cli.main(["run", str(missing)]) == 2
    assert capsys.readouterr().err == (f"jaxprune: error: {missing}: cannot read sweep file "
                                       "(No such file or directory)\n")


@pytest.mark.parametrize("argv, message", [
    ([], "jaxprune: error: the following arguments are required: COMMAND"),
    (["frobnicate"], "jaxprune: error: argument COMMAND: invalid choice: 'frobnicate' "
                     "(choose from "),
    (["run"], "jaxprune run: error: the following arguments are required: SWEEP.toml"),
    (["run", "s.toml", "--memory-budget", "lots"],
     "jaxprune run: error: argument --memory-budget: 'lots' is not a positive size like 4GB "
     "or 512MB"),
    (["run", "s.toml", "--memory-budget", "0GB"],
     "jaxprune run: error: argument --memory-budget: '0GB' is not a positive size like 4GB "
     "or 512MB"),
    (["run", "s.toml", "--chunk-runs", "0"],
     "jaxprune run: error: argument --chunk-runs: '0' is not an integer >= 1"),
    (["run", "s.toml", "--chunk-runs", "two"],
     "jaxprune run: error: argument --chunk-runs: 'two' is not an integer >= 1"),
    (["plot"], "jaxprune plot: error: the following arguments are required: DIR"),
])
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jaxprune")
    assert err.splitlines()[-1].startswith(message)


def test_a_budget_too_small_for_one_run_exits_2_and_writes_no_chunk(tmp_path, capsys):
    sweep_file = write(tmp_path / "tiny.toml", TINY_TOML)
    out = tmp_path / "out"
    assert cli.main(["run", str(sweep_file), "--out", str(out), "--memory-budget", "1KB",
                     "--no-progress"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("jaxprune: error: one run (d = 40, n = 8, n_test = 64, width = 4) "
                          "needs ") and "more than the memory budget of 1.0 KB" in err
    assert "Traceback" not in err and not (out / "plan.json").exists()


@pytest.mark.parametrize("text, size", [
    ("4GB", 4 * 2**30), ("512MB", 512 * 2**20), ("1.5G", 3 * 2**29), ("64KiB", 2**16),
    ("2t", 2 * 2**40), (".5G", 2**29), ("1000", 1000),
])
def test_memory_budget_sizes(text, size):
    assert cli._bytes(text) == size


def test_help_top_level_subprocess():
    proc = jaxprune_cmd("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: jaxprune [-h] COMMAND ...")
    for command in ("run", "status", "plot"):
        assert f"\n    {command} " in proc.stdout


def subcommands():
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_help_each_subcommand(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: jaxprune {command} [-h]")
    assert "options:" in out


def test_help_run_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("SWEEP.toml", "--out DIR", "--restart", "--memory-budget SIZE",
                   "--chunk-runs R", "--no-progress"):
        assert option in out


def test_plot_without_results_exits_2(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"jaxprune: error: {tmp_path}: no results.csv (run the sweep "
                              "first)\n")
    assert not (tmp_path / "figures").exists()


def test_plot_that_cannot_write_its_figure_exits_1(cli_run, tmp_path, capsys):
    _, out, _ = cli_run
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "results.csv", copy)
    (copy / "figures").write_text("a file where the folder goes")
    assert cli.main(["plot", str(copy)]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("jaxprune: error: cannot write the figure (") and err.endswith(
        f"the results are in {copy / 'results.csv'}\n")


# ---------------------------------------------------------------------------------------------
# `run` wiring and the printed summary, with the engine replaced by known numbers.


def fake_results(sweep, test_error, train_error, diverged):
    table = sweep.run_table()
    n = len(table)
    measured = {k: np.zeros(n, np.float32) for k in METRIC_COLUMNS}
    measured.update(test_error=np.asarray(test_error, np.float32),
                    train_error=np.asarray(train_error, np.float32),
                    diverged=np.asarray(diverged, bool))
    return results_columns(table, np.arange(n), measured)


def test_run_passes_options_and_prints_summary(tmp_path, monkeypatch, capsys):
    sweep_file = write(tmp_path / "tiny.toml", TINY_TOML)
    calls = []

    def fake_run(sweep, out, **kwargs):
        calls.append((sweep, out, kwargs))
        return fake_results(sweep, test_error=[0.25, 0.5, 0.125, 0.125],
                            train_error=[0.0, 0.25, 0.5, 0.5],
                            diverged=[False, False, False, True])

    monkeypatch.setattr(engine, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "tiny.toml", "--memory-budget", "2GB", "--chunk-runs", "3",
                     "--no-progress", "--restart"]) == 0
    (sweep, out, kwargs), = calls
    assert sweep == load_sweep(sweep_file)
    assert out == Path("runs") / "tiny"  # the default output directory
    assert kwargs == {"restart": True, "memory_budget": 2 * 2**30, "max_chunk_runs": 3,
                      "progress": False}
    assert capsys.readouterr().out.splitlines() == [
        "fraction  seeds     test_error    train_error  diverged",
        "       0      2  0.375 ± 0.125  0.125 ± 0.125         0",
        "     0.5      1          0.125          0.500         1",
        "",
        "results: runs/tiny/results.csv",
        "figure:  runs/tiny/figures/error_curves.png",
    ]
    assert (tmp_path / "runs" / "tiny" / "figures" / "error_curves.png").stat().st_size > 0

    calls.clear()
    assert cli.main(["run", "tiny.toml", "--out", "elsewhere"]) == 0
    (_, out, kwargs), = calls
    assert out == Path("elsewhere")
    assert kwargs == {"restart": False, "memory_budget": None, "max_chunk_runs": None,
                      "progress": True}


def test_summary_has_a_column_per_swept_field(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path / "s.toml", TINY_TOML.replace(
        "learning_rate = 0.1", "learning_rate = [0.1, 0.25]")))
    # Run order: fraction, then learning_rate, then seed (schema order, seeds innermost).
    columns = fake_results(sweep, test_error=np.arange(8) / 8, train_error=np.zeros(8),
                           diverged=np.zeros(8, bool))
    cli.print_summary(columns)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["learning_rate", "fraction", "seeds", "test_error",
                                "train_error", "diverged"]
    rows = [line.split() for line in lines[1:]]
    # seed means of (0, 1)/8, (4, 5)/8, (2, 3)/8, (6, 7)/8; standard error 1/16 each
    assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
        ("0.1", "0", "0.062", "0.062"), ("0.1", "0.5", "0.562", "0.062"),
        ("0.25", "0", "0.312", "0.062"), ("0.25", "0.5", "0.812", "0.062")]


def test_summary_writes_booleans_as_the_csv_does(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path / "s.toml", TINY_TOML.replace(
        "fraction = [0.0, 0.5]", "fraction = 0.5\nnested = [true, false]")))
    cli.print_summary(fake_results(sweep, test_error=[0.25] * 4, train_error=[0.0] * 4,
                                   diverged=[False] * 4))
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "nested", "false", "true"]


def test_summary_of_one_seed_shows_no_spread(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path / "s.toml", TINY_TOML.replace("seeds = 2", "seeds = 1")))
    cli.print_summary(fake_results(sweep, test_error=[0.25, 0.5], train_error=[0.0, 0.125],
                                   diverged=[False, False]))
    assert capsys.readouterr().out.splitlines() == [
        "fraction  seeds  test_error  train_error  diverged",
        "       0      1       0.250        0.000         0",
        "     0.5      1       0.500        0.125         0",
    ]


def test_summary_leaves_diverged_runs_out_of_the_means(tmp_path, capsys):
    # Runs: (fraction 0, seeds 0 and 1), (fraction 0.5, seeds 0 and 1); a diverged run counts
    # every example wrong, which would pull a mean past chance.
    sweep = load_sweep(write(tmp_path / "s.toml", TINY_TOML))
    cli.print_summary(fake_results(sweep, test_error=[0.25, 1.0, 1.0, 1.0],
                                   train_error=[0.0, 1.0, 1.0, 1.0],
                                   diverged=[False, True, True, True]))
    assert capsys.readouterr().out.splitlines() == [
        "fraction  seeds  test_error  train_error  diverged",
        "       0      1       0.250        0.000         1",
        "     0.5      0           -            -         2",
    ]


def test_summary_keeps_fractions_apart_to_the_digits_of_the_sweep(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path / "s.toml", TINY_TOML.replace(
        "fraction = [0.0, 0.5]", "fraction = [0.99975, 0.99985]")))
    cli.print_summary(fake_results(sweep, test_error=[0.25] * 4, train_error=[0.0] * 4,
                                   diverged=[False] * 4))
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "fraction", "0.99975", "0.99985"]


# ---------------------------------------------------------------------------------------------
# A tiny sweep end to end through the console script.


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Runs ``jaxprune run`` once on the tiny sweep; returns (sweep file, out dir, process)."""
    root = tmp_path_factory.mktemp("cli")
    sweep_file = write(root / "tiny.toml", TINY_TOML)
    out = root / "out"
    proc = jaxprune_cmd("run", sweep_file, "--out", out, "--no-progress", cwd=root)
    return sweep_file, out, proc


def test_run_end_to_end(cli_run):
    sweep_file, out, proc = cli_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    # results.csv: one row per run, every config field, the seed and the measurements
    cols = read_csv(out / "results.csv")
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    sweep = load_sweep(sweep_file)
    table = sweep.run_table()
    assert set(table.columns) | set(MEASURED) <= set(header)
    assert len(cols["seed"]) == len(table) == 4
    for name, column in table.columns.items():
        assert list(cols[name]) == list(column), name
    assert list(cols["fraction"]) == [0.0, 0.0, 0.5, 0.5] and list(cols["seed"]) == [0, 1, 0, 1]
    for name in ("train_error", "test_error"):
        assert np.all((cols[name] >= 0) & (cols[name] <= 1)), name
    # errors are counts over n = 8 training and n_test = 64 test examples
    assert np.array_equal(cols["train_error"] * 8, np.round(cols["train_error"] * 8))
    assert np.array_equal(cols["test_error"] * 64, np.round(cols["test_error"] * 64))
    assert np.all(cols["train_loss"] > 0) and np.all(cols["test_loss"] > 0)
    assert np.all(np.isfinite(cols["signal_learning"]))
    assert np.all(np.isfinite(cols["noise_memorization"]))
    assert np.all((cols["signal_filters"] >= 0) & (cols["signal_filters"] <= 4))
    assert cols["signal_filters"].dtype.kind == "i"
    assert cols["diverged"].dtype == bool and not cols["diverged"].any()
    # without pruning every filter keeps the signal coordinate
    assert list(cols["signal_filters"][:2]) == [4, 4]
    assert (out / "sweep.toml").exists() and load_sweep(out / "sweep.toml") == sweep

    # the figure
    assert (out / "figures" / "error_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the printed table: one row per fraction, seed-mean test error and its standard error
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["fraction", "seeds", "test_error", "train_error", "diverged"]
    rows = [line.split() for line in lines[1:3]]
    assert lines[3:] == ["", f"results: {out / 'results.csv'}",
                         f"figure:  {out / 'figures' / 'error_curves.png'}"]
    for row, fraction in zip(rows, (0.0, 0.5)):
        test_error = cols["test_error"][cols["fraction"] == fraction]
        train_error = cols["train_error"][cols["fraction"] == fraction]
        assert row == [
            f"{fraction:g}", "2",
            f"{test_error.mean():.3f}", "±", f"{test_error.std(ddof=1) / np.sqrt(2):.3f}",
            f"{train_error.mean():.3f}", "±", f"{train_error.std(ddof=1) / np.sqrt(2):.3f}",
            "0"]


def test_a_second_run_reads_jax_s_persistent_cache_and_gives_the_same_numbers(tmp_path):
    """README *Compiling once*: with JAX's persistent cache, a second process reads both
    formulations' ``advance`` (their native calls among them) from it and writes the same
    results, bit for bit."""
    sweep_file = write(tmp_path / "tiny.toml", TINY_TOML.replace("n = 8", "n = [8, 16]"))
    chunks = plan_chunks(load_sweep(sweep_file).run_table(), 1 << 30)
    assert {c.static.kernel_step for c in chunks} == {True, False}
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_LOG_COMPILES="1")
    first, second = (subprocess.run(
        [*JAXPRUNE, "run", str(sweep_file), "--out", str(tmp_path / out), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300) for out in ("first", "second"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert ((tmp_path / "first" / "results.csv").read_bytes()
            == (tmp_path / "second" / "results.csv").read_bytes())
    hits = r"Persistent compilation cache hit for 'jit_advance' with key '([^']+)'"
    assert not re.search(hits, first.stderr)
    # On some CPUs JAX rejects every CPU executable it cached (jax-ml/jax#38445, "Target
    # machine feature ... is not supported"): the second run then compiles again.
    if "Target machine feature" not in second.stderr:  # one program a formulation (older
        assert len(set(re.findall(hits, second.stderr))) == 2  # JAX logs each hit twice)


def test_the_sweep_file_chooses_plain_gds_formulation(tmp_path, monkeypatch):
    """``formulation = "direct"`` turns off the kernel formulation that "auto" runs at the
    tiny sweep's sizes (n^2 <= 2d); the two give the same numbers to float32 rounding, and
    ``results.csv`` records the option."""
    ran = []
    build_gram = train.build_gram
    monkeypatch.setattr(train, "build_gram", lambda mask, groups, static: (
        ran.append(static.kernel_step), build_gram(mask, groups, static))[1])
    results = {}
    for formulation in ("auto", "direct"):
        text = TINY_TOML.replace("[train]\n", f'[train]\nformulation = "{formulation}"\n')
        sweep = load_sweep(write(tmp_path / f"{formulation}.toml", text))
        results[formulation] = jaxprune.run(sweep, tmp_path / formulation, progress=False)
    assert ran == [True, False]  # one chunk each
    kernel, direct = results["auto"], results["direct"]
    assert set(kernel["formulation"]) == {"auto"} and set(direct["formulation"]) == {"direct"}
    for name in ("train_loss", "test_loss", "signal_learning", "noise_memorization"):
        np.testing.assert_allclose(direct[name], kernel[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    # An example whose margin is within rounding of 0 could flip: at most one each.
    assert np.all(np.abs(direct["train_error"] - kernel["train_error"]) <= 1 / 8 + 1e-9)
    assert np.all(np.abs(direct["test_error"] - kernel["test_error"]) <= 1 / 64 + 1e-9)


def test_a_sweep_on_xlas_products_says_so(tmp_path, monkeypatch):
    """Where the native CPU step cannot run, a float32 sweep says so once, with the reason
    (numpy 2.5's OpenBLAS once turned it off without a word); where it runs, nothing."""
    sweep = load_sweep(write(tmp_path / "tiny.toml", TINY_TOML))
    notes = {}
    for case in ("native", "xla"):
        if case == "xla":
            monkeypatch.setattr(cpu_update, "status", lambda: "XLA: no C++ compiler (stand-in)")
        notes[case] = []
        jaxprune.run(sweep, tmp_path / case, progress=False, log=notes[case].append)
    slower = [note for note in notes["xla"] if "XLA's own products" in note]
    assert slower == ["note: the CPU step runs XLA's own products, slower than its native "
                      "ones (no C++ compiler (stand-in); README, *How it runs*)"]
    assert not any("XLA's own products" in note for note in notes["native"])


def test_status_into_a_closed_pipe_ends_quietly(cli_run):
    _, out, _ = cli_run
    read, write = os.pipe()
    os.close(read)  # the reader is gone, as after `jaxprune status DIR | head -1`
    try:
        done = subprocess.run([*JAXPRUNE, "status", str(out)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == cli.EXIT_FAILURE and done.stderr == ""


def test_plot_subprocess(cli_run, tmp_path):
    _, out, proc = cli_run
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.csv").write_bytes((out / "results.csv").read_bytes())
    done = jaxprune_cmd("plot", copy)
    assert done.returncode == 0, done.stderr
    figure = copy / "figures" / "error_curves.png"
    assert done.stdout == f"figure: {figure}\n"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_bad_results_table_is_one_line(cli_run, tmp_path, capsys):
    _, out, _ = cli_run
    good = (out / "results.csv").read_text().splitlines()
    cases = {
        "": "results.csv is empty",
        "a,b\n1,2\n": "results.csv is not a jaxprune results table (no column fraction, "
                       "seed, test_error, train_error, diverged)",
        "\n".join(good[:2] + [good[2][:40]]): "results.csv: line 3 has",
        good[0] + "\n": "results.csv holds no runs yet",
    }
    for text, expected in cases.items():
        (tmp_path / "results.csv").write_text(text)
        capsys.readouterr()
        assert cli.main(["plot", str(tmp_path)]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("jaxprune: error: ") and expected in err, (text, err)
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "figures").exists()


def test_figure_of_many_cells_keeps_its_axes(tmp_path):
    """42 cells: distinct colours, the legend beside the axes in columns (inside them, it
    squeezed the axes to nothing)."""
    from jaxprune import plots

    sweep = sweep_from_dict({"data": {"d": list(range(500, 542))}, "sweep": {"seeds": 2}})
    columns = fake_results(sweep, test_error=np.full(84, 0.25), train_error=np.zeros(84),
                           diverged=np.zeros(84, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns where the layout collapses
        path = plots.error_curves(columns, tmp_path / "many.png")
    width = int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's width
    assert width == round((6.4 + 2 * 2.4) * 120)  # two legend columns of at most 24


def test_python_api_matches_cli(cli_run, tmp_path):
    sweep_file, out, proc = cli_run
    assert proc.returncode == 0, proc.stderr
    columns = jaxprune.run(load_sweep(sweep_file), tmp_path / "api", progress=False)
    assert (tmp_path / "api" / "results.csv").read_text() == (out / "results.csv").read_text()
    from_cli = read_csv(out / "results.csv")
    assert list(columns) == list(from_cli)
    for name, column in columns.items():
        expected = from_cli[name].astype(column.dtype) if column.dtype != object \
            else from_cli[name]
        assert np.array_equal(column, expected), name
