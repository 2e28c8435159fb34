"""The ``jaxprune`` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_USAGE = 2  # the user must fix the input
EXIT_FAILURE = 1  # the environment refused (directory in use, unwritable)


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4GB or 512MB")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


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
                   help="discard what DIR holds and start over")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxprune.config import ConfigError
    from jaxprune.engine import OutputError
    from jaxprune.lock import LockedError

    try:
        return {"run": cmd_run, "status": cmd_status, "plot": cmd_plot}[args.command](args)
    except ConfigError as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (LockedError, OutputError) as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("jaxprune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from jaxprune import engine, plots
    from jaxprune.config import load_sweep

    sweep = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / sweep.name
    columns = engine.run(sweep, out, restart=args.restart, memory_budget=args.memory_budget,
                         max_chunk_runs=args.chunk_runs, progress=not args.no_progress)
    print_summary(columns)
    figure = plots.error_curves(columns, out / "figures" / "error_curves.png", sweep.name)
    print(f"\nresults: {out / 'results.csv'}\nfigure:  {figure}")
    return 0


def print_summary(columns) -> None:
    """Seed-mean test and train error (± standard error) against fraction, per cell."""
    from jaxprune.results import cell_fields, summarize

    rows = summarize(columns)
    keys = cell_fields(columns)
    header = [*keys, "fraction", "seeds", "test_error", "train_error", "diverged"]
    lines = [header]
    for r in rows:
        lines.append([*(f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys),
                      f"{r['fraction']:.4g}", str(r["seeds"]),
                      f"{r['test_error']:.3f} ± {r['test_error_se']:.3f}",
                      f"{r['train_error']:.3f} ± {r['train_error_se']:.3f}",
                      str(r["diverged"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def cmd_status(args) -> int:
    from jaxprune.checkpoint import saved_steps
    from jaxprune.config import ConfigError
    from jaxprune.lock import lock_is_stale, read_lock

    out = Path(args.dir)
    if not (out / "sweep.toml").exists():
        raise ConfigError(f"{out}: not a sweep directory (no sweep.toml)")
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        runs_done, runs = manifest["runs_done"], manifest["runs"]
        chunks_done, chunks = len(manifest["chunks_done"]), manifest["chunks"]
    except (OSError, ValueError, KeyError):
        plan = json.loads((out / "plan.json").read_text()) if (out / "plan.json").exists() \
            else {"chunks": []}
        runs_done, chunks_done, chunks = 0, 0, len(plan["chunks"])
        runs = sum(sum(r != -1 for row in c["runs"] for r in row) for c in plan["chunks"])
    print(f"{out}: {runs_done} of {runs} runs done ({chunks_done} of {chunks} chunks)")
    for folder in sorted((out / "checkpoints").glob("chunk-*")):
        steps = saved_steps(folder)
        newest = f"newest checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"
        print(f"chunk in flight: {folder.name.split('-')[1].lstrip('0') or '0'} ({newest})")
    owner = read_lock(out)
    if owner is None:
        print("lock: free")
    elif lock_is_stale(owner):
        print(f"lock: stale (pid {owner.get('pid')} on {owner.get('host')} is gone)")
    else:
        print(f"lock: held by pid {owner.get('pid')} on {owner.get('host')} "
              f"since {owner.get('since')}")
    print("finished" if runs and runs_done == runs else "unfinished")
    return 0


def cmd_plot(args) -> int:
    from jaxprune import plots
    from jaxprune.config import ConfigError
    from jaxprune.results import read_csv

    out = Path(args.dir)
    if not (out / "results.csv").exists():
        raise ConfigError(f"{out}: no results.csv (run the sweep first)")
    figure = plots.error_curves(read_csv(out / "results.csv"),
                                out / "figures" / "error_curves.png", out.name)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
