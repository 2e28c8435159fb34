"""Is a call of 10 steps representative of the engine's segments of ``eval_every`` steps?

    .venv/bin/python benchmarks/segment_check.py SIZE LAYOUT RUNS [REPEATS]
    .venv/bin/python benchmarks/segment_check.py paper-d1000 shared 256 3

For one bench case, times interleaved (medians of REPEATS): a zero-step call ``c``, a call of
10 steps ``t_10`` and a call of ``eval_every`` steps ``t_E``, and compares the per-step time
that spreading the call's cost over a segment predicts, ``(t_10 - c) / 10 + c / E``, with
``t_E / E`` (``t_10 / 10`` is what the bench reports).
"""

import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench  # noqa: E402

USAGE = f"""usage: benchmarks/segment_check.py SIZE LAYOUT RUNS [REPEATS]
  SIZE: {", ".join(bench.SIZE_SETS)}; LAYOUT: shared or seeds; RUNS and REPEATS
  (default 3): positive integers
example: .venv/bin/python benchmarks/segment_check.py paper-d1000 shared 256 3"""


def main(size, layout, runs, repeats=3):
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, int(runs), layout))
    runner = bench.AdvanceRunner(static, *bench.case_inputs(static))
    E = static.eval_every

    def empty_call():  # the step program with zero steps: set-up and first projections
        runner.state = jax.block_until_ready(runner.steps_only(
            runner.state, runner.params, runner.groups, jnp.int32(0), gram=runner.gram))

    calls = {"c": empty_call, "t_10": lambda: runner.run_steps(10),
             "t_E": lambda: runner.run_steps(E)}
    runner.run_steps(1)
    times = bench._interleaved(calls, int(repeats))
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = (med["t_10"] - med["c"]) / 10 + med["c"] / E
    print(f"{size} {layout} R={runs}: c {med['c'] * 1e3:.1f} ms, t_10 / 10 "
          f"{med['t_10'] * 1e2:.2f} ms, predicted {spread * 1e3:.2f} ms, "
          f"t_{E} / {E} {med['t_E'] / E * 1e3:.2f} ms (ratio {spread / (med['t_E'] / E):.3f})")


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        3 <= len(a) <= 4 and a[0] in bench.SIZE_SETS and a[1] in bench.LAYOUTS
        and bench.positive_ints(a[2:]))))
