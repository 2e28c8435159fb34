"""The shipped quick sweep shows the three claims, run from the command line as a user would."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxprune.results import read_csv, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_shows_help_harmless_and_collapse(tmp_path):
    out = tmp_path / "quick"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxprune.cli", "run", str(ROOT / "sweeps" / "quickstart.toml"),
         "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (out / "figures" / "error_curves.png").stat().st_size > 10_000
    rows = summarize(read_csv(out / "results.csv"))
    p = np.array([r["fraction"] for r in rows])
    test = np.array([r["test_error"] for r in rows])
    train = np.array([r["train_error"] for r in rows])
    best = int(np.argmin(test))
    assert 0 < best < len(p) - 1  # the best fraction is intermediate
    assert test[0] > test[best] + 0.25  # pruning helps: p = 0 overfits harmfully
    assert test[0] > 0.4 and np.all(train[:-1] == 0)
    assert test[-1] > 0.45 and train[-1] < 0.1  # over-pruning: chance level, yet interpolating
    assert f"{test[best]:.3f}" in proc.stdout  # the printed table carries the numbers
