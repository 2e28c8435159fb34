"""How far two sweeps' results are apart, run by run (another machine, another precision):

    python benchmarks/compare_results.py A/results.csv B/results.csv
    python benchmarks/compare_results.py A B      # the sweeps' output directories

Runs are matched by their ``run`` index (the same sweep file gives the same runs). Prints,
per result column, the largest absolute difference and how many runs differ at all; the runs
whose test error moved by more than one test example; and the seed-mean errors per pruning
fraction of both.
"""

import argparse
from pathlib import Path

import numpy as np

from jaxprune.results import read_csv

#: The result columns compared, in the order printed: a subset of
#: ``jaxprune.results.METRIC_COLUMNS`` (without the realized fraction and the per-class splits).
COLUMNS = ("train_loss", "test_loss", "train_error", "test_error", "signal_learning",
           "noise_memorization", "signal_filters", "diverged")


def read(path: str) -> dict[str, np.ndarray]:
    """The columns of a results.csv (or of a sweep directory's) as float arrays, in the order
    of ``run``."""
    columns = read_csv(Path(path) / "results.csv" if Path(path).is_dir() else path)
    order = np.argsort(columns["run"], kind="stable")
    return {k: columns[k][order].astype(np.float64)
            for k in ("run", "fraction", "n_test", *COLUMNS)}


def compare(a: dict, b: dict) -> str:
    if not np.array_equal(a["run"], b["run"]):
        raise SystemExit("the two results hold different runs")
    lines = [f"{len(a['run'])} runs", "", "| column | max abs difference | runs differing |",
             "|---|---:|---:|"]
    for col in COLUMNS:
        diff = np.abs(a[col] - b[col])
        lines.append(f"| {col} | {diff.max():.3g} | {(diff > 0).sum()} |")
    moved = np.abs(a["test_error"] - b["test_error"]) > 1.0 / a["n_test"] + 1e-12
    lines += ["", f"test error moved by more than one test example: {moved.sum()} runs", "",
              "| fraction | test error A | test error B | train error A | train error B |",
              "|---:|---:|---:|---:|---:|"]
    for p in np.unique(a["fraction"]):
        at = a["fraction"] == p
        lines.append(f"| {p:g} | {a['test_error'][at].mean():.4f} "
                     f"| {b['test_error'][at].mean():.4f} | {a['train_error'][at].mean():.4f} "
                     f"| {b['train_error'][at].mean():.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="example: .venv/bin/python benchmarks/compare_results.py runs/a/results.csv "
               "runs/b/results.csv")
    parser.add_argument("a", help="a results.csv, or the sweep directory holding it")
    parser.add_argument("b", help="another of the same sweep file")
    args = parser.parse_args()
    print(compare(read(args.a), read(args.b)))


if __name__ == "__main__":
    main()
