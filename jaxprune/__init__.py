"""jaxprune: batched sweeps of randomly pruned two-layer networks in JAX.

Example:
  >>> import jaxprune
  >>> sweep = jaxprune.load_sweep("sweeps/quickstart.toml")
  >>> results = jaxprune.run(sweep, "runs/quickstart")   # dict of columns, one row per run
"""

from jaxprune.config import ConfigError, Sweep, load_sweep, sweep_from_dict
from jaxprune.engine import OutOfMemory, OutputError, SweepMismatch, run
from jaxprune.lock import LockedError
from jaxprune.plan import PlanError
from jaxprune.results import read_csv, read_npz, summarize

__all__ = ["ConfigError", "LockedError", "OutOfMemory", "OutputError", "PlanError", "Sweep",
           "SweepMismatch", "load_sweep", "read_csv", "read_npz", "run", "summarize",
           "sweep_from_dict"]
