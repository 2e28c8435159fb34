"""The evaluation at several block sizes: its time and the memory it adds to state + data.

    .venv/bin/python benchmarks/eval_blocks.py SIZE RUNS LAYOUT [REPEATS]
    .venv/bin/python benchmarks/eval_blocks.py quickstart 256 shared

For one bench case (``jaxprune.bench.SIZE_SETS``, layout ``shared`` or ``seeds``), the
evaluation (``train._evaluate``) with blocks of 16, 4 and 1 MiB of weights and examples:
medians of REPEATS calls timed in alternation in one process, then, in a fresh process per
block size (glibc keeps freed temporaries, so one process would measure the largest block
for all), ``1 + (peak RSS over four calls - RSS before them) / (state + data bytes)``.
"""

import functools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, train  # noqa: E402

BLOCKS_MIB = (16, 4, 1)
USAGE = f"""usage: benchmarks/eval_blocks.py SIZE RUNS LAYOUT [REPEATS]
  SIZE: {", ".join(bench.SIZE_SETS)}; RUNS: a positive integer; LAYOUT: shared or seeds;
  REPEATS: timed calls per block size (default 7)
example: .venv/bin/python benchmarks/eval_blocks.py quickstart 256 shared"""


def _inputs(size, runs, layout):
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, int(runs), layout))
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static=static)
    state = train.init_state(params, groups, static=static)
    return static, jax.block_until_ready((state, params, groups))


def _evaluation(static, args, mib):
    fn = train._static_precision(
        functools.partial(train._evaluate, static=static, block_bytes=mib << 20))
    return jax.jit(fn, compiler_options=train.COMPILER_OPTIONS).lower(*args).compile()


def peak_ratio(size, runs, layout, mib):
    """Runs in a fresh process; prints ``1 + (peak RSS of four evaluations - RSS before them)
    / (state + data bytes)``."""
    static, args = _inputs(size, runs, layout)
    evaluate = _evaluation(static, args, mib)
    before = bench._status_kib("VmRSS") * 1024
    bench._reset_peak()
    for _ in range(4):
        jax.block_until_ready(evaluate(*args))
    held = sum(bench.tree_bytes(a) for a in args)
    print(json.dumps((bench._status_kib("VmHWM") * 1024 - before + held) / held))


def main(size, runs, layout, repeats=7):
    static, args = _inputs(size, runs, layout)
    calls = {mib: _evaluation(static, args, mib) for mib in BLOCKS_MIB}
    for evaluate in calls.values():
        jax.block_until_ready(evaluate(*args))
    times = bench._interleaved(
        {mib: lambda e=e: jax.block_until_ready(e(*args)) for mib, e in calls.items()},
        int(repeats))
    print(f"{size} R = {runs} {layout}: medians of {repeats}, and peak memory over state + data")
    print("| block | evaluation s | memory |\n|---:|---:|---:|")
    for mib in BLOCKS_MIB:
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import eval_blocks; eval_blocks.peak_ratio({size!r}, {runs}, {layout!r}, {mib})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        ratio = json.loads(out.strip().splitlines()[-1])
        print(f"| {mib} MiB | {statistics.median(times[mib]):.4f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        3 <= len(a) <= 4 and a[0] in bench.SIZE_SETS and a[2] in bench.LAYOUTS
        and bench.positive_ints(a[1:2] + a[3:]))))
