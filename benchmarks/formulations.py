"""The two formulations of plain GD on one sweep, in its own dtype: final weights and metrics.

    .venv/bin/python benchmarks/formulations.py [sweeps/quickstart.toml]

Runs every chunk of the sweep twice through ``train.advance`` in segments of ``eval_every``
steps (as the engine does), once with ``formulation="direct"`` and once with "kernel", and
prints the wall time of each (compilation included) and how far apart the results are.
"""

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import train  # noqa: E402
from jaxprune.config import load_sweep  # noqa: E402
from jaxprune.engine import _chunk_inputs  # noqa: E402
from jaxprune.plan import default_memory_budget, plan_chunks  # noqa: E402

METRICS = ("train_loss", "test_loss", "train_error", "test_error", "noise_memorization")
USAGE = """usage: benchmarks/formulations.py [SWEEP]
  SWEEP: a sweep file (default sweeps/quickstart.toml)
example: .venv/bin/python benchmarks/formulations.py sweeps/quickstart.toml"""


def run(table, chunk, formulation):
    static = dataclasses.replace(chunk.static, formulation=formulation)
    params, seeds = _chunk_inputs(table, chunk)
    groups = train.make_groups(seeds, static)
    state = train.init_state(params, groups, static)
    start = time.perf_counter()
    gram = train.build_gram(state.mask, groups, static)
    done = 0
    while done < static.steps:
        segment = min(static.eval_every, static.steps - done)
        state, metrics = train.advance(state, params, groups, jnp.int32(segment), static, gram)
        done += segment
    jax.block_until_ready(metrics)
    return np.asarray(state.net.w), jax.device_get(metrics), time.perf_counter() - start


def main(path="sweeps/quickstart.toml"):
    table = load_sweep(path).run_table()
    for chunk in plan_chunks(table, default_memory_budget()):
        (w_d, m_d, t_d), (w_k, m_k, t_k) = (run(table, chunk, f) for f in ("direct", "kernel"))
        print(f"chunk {chunk.index} ({chunk.static.dtype}, S x G = {chunk.static.groups} x "
              f"{chunk.static.group_size}): direct {t_d:.2f} s, kernel {t_k:.2f} s")
        print(f"  max |W_kernel - W_direct| / max |W_direct| = "
              f"{np.abs(w_k - w_d).max() / np.abs(w_d).max():.2e}")
        for key in METRICS:
            a, b = np.asarray(getattr(m_d, key)), np.asarray(getattr(m_k, key))
            rel = np.abs(a - b) / np.maximum(np.abs(a), np.finfo(a.dtype).tiny)
            print(f"  {key}: max abs difference {np.abs(a - b).max():.2e}, "
                  f"max relative {rel.max():.2e}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(USAGE)
        sys.exit(0)
    if not (len(args) <= 1 and all(Path(a).is_file() for a in args)):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    main(*args)
