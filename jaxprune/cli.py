"""The ``jaxprune`` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_USAGE = 2  # the user must fix the input
EXIT_FAILURE = 1  # the environment refused (directory in use, unwritable)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+\.?[0-9]*|\.[0-9]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    size = 0
    if m:
        scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
        size = int(float(m.group(1)) * scale)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size like 4GB or 512MB")
    return size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxprune", description="Batched sweeps of randomly pruned two-layer networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a sweep, or resume it",
                       description="Runs SWEEP.toml, or resumes it if DIR holds an unfinished "
                                   "run of the same sweep.")
    p.add_argument("sweep", metavar="SWEEP.toml")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/<name>)")
    p.add_argument("--restart", action="store_true",
                   help="discard the sweep output DIR holds (not other files) and start over")
    p.add_argument("--memory-budget", type=_bytes, metavar="SIZE",
                   help="memory one chunk may use, e.g. 4GB (default: from the device)")
    p.add_argument("--chunk-runs", type=_positive_int, metavar="R",
                   help="at most R runs per chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("status", help="how far a sweep directory is",
                       description="Runs done, the chunk in flight, its newest checkpoint and "
                                   "whether a process holds the directory.")
    p.add_argument("dir", metavar="DIR")

    p = sub.add_parser("plot", help="draw the figures of a sweep directory",
                       description="Draws the error curves of DIR/results.csv into "
                                   "DIR/figures/.")
    p.add_argument("dir", metavar="DIR")

    from jaxprune import bench
    p = sub.add_parser("bench", help="measure throughput (run-steps per second)",
                       description="Times the training step (batched advance, a plain loop "
                                   "over runs, PyTorch if installed) against this machine's "
                                   "matrix-product peak; prints markdown tables.")
    bench.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxprune.config import ConfigError
    from jaxprune.engine import OutOfMemory, OutputError
    from jaxprune.lock import LockedError

    try:
        return {"run": cmd_run, "status": cmd_status, "plot": cmd_plot,
                "bench": cmd_bench}[args.command](args)
    except ConfigError as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (LockedError, OutputError, OutOfMemory) as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("jaxprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`jaxprune status DIR | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_FAILURE


def cmd_run(args) -> int:
    from jaxprune import engine
    from jaxprune.config import load_sweep

    sweep = load_sweep(args.sweep)
    out = engine.output_dir(sweep, args.out)
    with _exit_on_interrupt(out):
        columns = engine.run(sweep, out, restart=args.restart, memory_budget=args.memory_budget,
                             max_chunk_runs=args.chunk_runs, progress=not args.no_progress)
    print_summary(columns)
    figure = _draw(columns, out, sweep.name)
    print(f"\nresults: {out / 'results.csv'}\nfigure:  {figure}")
    return 0


@contextlib.contextmanager
def _exit_on_interrupt(out: Path):
    """Ctrl-C ends the run at once, as a kill would (every write is atomic and a resume is
    exact after any kill), with a line saying so. A KeyboardInterrupt instead could land in
    one of JAX's callbacks and be lost, or in XLA's compiler and crash the exit. Where SIGINT
    is ignored (a background job) it stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return

    def stop(signum, frame):
        from jaxprune.lock import LOCK_NAME, read_lock

        if (read_lock(out) or {}).get("pid") == os.getpid():
            (out / LOCK_NAME).unlink(missing_ok=True)  # still held: no one can take it first
        print("\njaxprune: interrupted; run the same command again to resume", file=sys.stderr,
              flush=True)
        os._exit(EXIT_INTERRUPTED)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _draw(columns, out: Path, title: str) -> Path:
    """The error curves of ``columns`` into ``out/figures/``."""
    from jaxprune import plots
    from jaxprune.engine import OutputError, figure_file

    try:
        return plots.error_curves(columns, figure_file(out), title)
    except OSError as e:
        raise OutputError(f"cannot write the figure ({e}); the results are in "
                          f"{out / 'results.csv'}") from e


def print_summary(columns) -> None:
    """Seed-mean test and train error (± standard error, where there are two seeds or more)
    against fraction, per cell, over the runs that did not diverge."""
    from jaxprune.results import cell_fields, summarize

    rows = summarize(columns)
    keys = cell_fields(columns)
    header = [*keys, "fraction", "seeds", "test_error", "train_error", "diverged"]
    lines = [header]
    for r in rows:
        lines.append([*(_cell(r[k]) for k in keys),
                      f"{r['fraction']:.12g}", str(r["seeds"]), _mean_se(r, "test_error"),
                      _mean_se(r, "train_error"), str(r["diverged"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def _cell(value) -> str:
    """A swept field's value as results.csv writes it (``0.3``, ``true``, ``adam``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def _mean_se(row: dict, key: str) -> str:
    """``mean ± standard error``, the mean alone from one seed (no spread to show), or ``-``
    where every run diverged."""
    if row["seeds"] == 0:
        return "-"
    mean = f"{row[key]:.3f}"
    return f"{mean} ± {row[key + '_se']:.3f}" if row["seeds"] > 1 else mean


def cmd_bench(args) -> int:
    from jaxprune import bench

    return bench.main(args)


def cmd_status(args) -> int:
    """Prints runs done / total, the chunk in flight and its newest checkpoint, the lock."""
    from jaxprune.checkpoint import saved_steps
    from jaxprune.config import ConfigError, load_sweep
    from jaxprune.engine import SweepMismatch, checkpoint_dir, chunk_done, read_plan
    from jaxprune.lock import lock_is_stale, read_lock

    out = Path(args.dir)
    if not (out / "sweep.toml").exists():
        raise ConfigError(f"{out}: not a sweep directory (no sweep.toml)")
    runs = len(load_sweep(out / "sweep.toml").run_table())
    try:
        _, chunks = read_plan(out) or (None, [])  # no plan yet: killed before it was written
    except SweepMismatch as e:
        print(f"note: {e}; the next run plans the sweep again")
        chunks = []
    done = [chunk_done(out, c, print) for c in chunks]
    if chunks:
        runs_done = sum(len(c.run_ids) for c, d in zip(chunks, done) if d)
        print(f"{out}: {runs_done} of {runs} runs done ({sum(done)} of {len(chunks)} chunks)")
    else:
        print(f"{out}: {len(_runs_in_chunk_files(out))} of {runs} runs in chunk files, "
              "no chunk plan")
    pending = [c for c, d in zip(chunks, done) if not d]
    if pending:
        c = pending[0]
        steps = saved_steps(checkpoint_dir(out, c.index))
        newest = (f"newest checkpoint at step {steps[-1]} of {c.static.steps}" if steps
                  else "no checkpoint yet")
        print(f"chunk in flight: {c.index} ({newest})")
    owner = read_lock(out)
    if owner is None:
        print("lock: free")
    elif lock_is_stale(owner):
        print(f"lock: stale (pid {owner.get('pid')} on {owner.get('host')} is gone; the next "
              "run takes it over)")
    else:
        print(f"lock: held by pid {owner.get('pid')} on {owner.get('host')} "
              f"since {owner.get('since')}")
    print("finished" if chunks and not pending else "unfinished")
    return 0


def _runs_in_chunk_files(out: Path) -> set[int]:
    """The runs the readable chunk files of ``out`` hold."""
    from jaxprune.results import read_npz

    runs = set()
    for path in sorted((out / "chunks").glob("chunk-*.npz")):
        try:
            runs.update(int(r) for r in read_npz(path)["run"])
        except Exception:  # a damaged file holds no finished runs
            continue
    return runs


def cmd_plot(args) -> int:
    from jaxprune.config import ConfigError
    from jaxprune.results import SUMMARY_COLUMNS, read_csv

    out = Path(args.dir)
    path = out / "results.csv"
    if not path.exists():
        raise ConfigError(f"{out}: no results.csv (run the sweep first)")
    try:
        columns = read_csv(path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    missing = [k for k in SUMMARY_COLUMNS if k not in columns]
    if missing:
        raise ConfigError(f"{path} is not a jaxprune results table (no column "
                          f"{', '.join(missing)})")
    if not len(columns["seed"]):
        raise ConfigError(f"{path} holds no runs yet")
    figure = _draw(columns, out, out.name)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
