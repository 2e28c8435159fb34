"""Where the kernel formulation of plain GD pays: both formulations' steps on one case.

    .venv/bin/python benchmarks/kernel_crossover.py D N RUNS LAYOUT [REPEATS]
    .venv/bin/python benchmarks/kernel_crossover.py 1000 150 64 seeds

Times ``train.train_steps`` of one segment (``eval_every`` = 100 steps) in the direct and the
kernel formulation, interleaved, each from a settled process (as ``jaxprune bench``), medians
of REPEATS (default 5), at width 50; and the kernel formulation's Gram build, once. Prints
run-steps per second, the ratio, and after how many steps the build is repaid. The rule these
figures set is ``spec.kernel_pays``.
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, cpu_update  # noqa: E402

USAGE = """usage: benchmarks/kernel_crossover.py D N RUNS LAYOUT [REPEATS]
  D, N, RUNS, REPEATS: positive integers; LAYOUT: shared or seeds
example: .venv/bin/python benchmarks/kernel_crossover.py 1000 150 64 seeds"""


def main(d, n, runs, layout, repeats=5):
    print(cpu_update.status())
    runners = {}
    for formulation in ("direct", "kernel"):
        static = bench.case_static(bench.Case(f"d{d}-n{n}", d, n, 50, runs, layout,
                                              formulation=formulation))
        runners[formulation] = bench.AdvanceRunner(static, *bench.case_inputs(static))
    segment = static.eval_every  # the same in both
    for runner in runners.values():
        runner.run_steps(segment)  # warm-up
    times = bench._interleaved({k: (lambda r=r: r.run_steps(segment))
                                for k, r in runners.items()}, repeats)
    step = {k: statistics.median(v) / segment for k, v in times.items()}
    for k in runners:
        print(f"{k}: {runs / step[k]:,.0f} run-steps/s")
    gain = step["direct"] - step["kernel"]
    gram = runners["kernel"].gram_s
    repaid = f"after {gram / gain:,.0f} steps" if gain > 0 else "never"
    print(f"d / n = {d / n:.1f}: kernel / direct {step['direct'] / step['kernel']:.2f}x; "
          f"Gram build {gram:.3f} s ({gram / runs * 1e3:.2f} ms a run), repaid {repaid}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(USAGE)
        sys.exit(0)
    try:
        d, n, runs = (int(a) for a in args[:3])
        repeats = int(args[4]) if len(args) == 5 else 5
        if len(args) not in (4, 5) or args[3] not in bench.LAYOUTS or min(d, n, runs,
                                                                            repeats) < 1:
            raise ValueError
    except ValueError:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    main(d, n, runs, args[3], repeats)
