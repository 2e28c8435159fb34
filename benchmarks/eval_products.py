"""The evaluation with the test projections by XLA and by the own kernel (``cpu_update``).

    .venv/bin/python benchmarks/eval_products.py SIZE RUNS LAYOUT N_TEST [REPEATS]
    .venv/bin/python benchmarks/eval_products.py paper-d1000 128 seeds 2000

For one bench case (``jaxprune.bench.SIZE_SETS``; LAYOUT ``shared``, ``seeds`` or G, the runs
of a seed, which divides RUNS) with N_TEST test examples, after 50 training steps:
``train._evaluate`` with ``native=False`` (XLA's products, one example at a time) and
``native=True``, compiled once each, timed in alternation (``bench._interleaved``, medians of
REPEATS, default 7) with a segment of ``eval_every`` (100) training steps as a sweep runs it
(``train.train_steps``, the Gram matrices built once first where the kernel formulation
runs). Prints how far apart the metrics are, each evaluation's time, the FLOP/s of the test
products alone (``2 R 2m n_test d``) over the whole evaluation's time, and how many training
steps take as long as one evaluation.
"""

import dataclasses
import functools
import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, train  # noqa: E402

USAGE = f"""usage: benchmarks/eval_products.py SIZE RUNS LAYOUT N_TEST [REPEATS]
  SIZE: {", ".join(bench.SIZE_SETS)}; LAYOUT: shared, seeds or the runs of a seed
example: .venv/bin/python benchmarks/eval_products.py paper-d1000 128 seeds 2000"""


def main(size, runs, layout, n_test, repeats=7):
    d, n, m = bench.SIZE_SETS[size]
    runs, n_test = int(runs), int(n_test)
    group = {"shared": runs, "seeds": 1}.get(layout) or int(layout)
    static = bench.case_static(bench.Case(size, d, n, m, runs, "seeds", n_test=n_test))
    static = dataclasses.replace(static, groups=runs // group, group_size=group)
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static=static)
    state = train.init_state(params, groups, static=static)
    state = train.train_steps(state, params, groups, jax.numpy.int32(50), static=static)
    args = jax.block_until_ready((state, params, groups))

    def compiled(native):
        fn = train._static_precision(
            functools.partial(train._evaluate, static=static, native=native))
        return jax.jit(fn, compiler_options=train.COMPILER_OPTIONS).lower(*args).compile()

    calls = {"XLA": compiled(False), "native": compiled(True)}
    out = {k: jax.block_until_ready(c(*args)) for k, c in calls.items()}
    segment = _segment(static, params, groups)
    for field in out["XLA"]._fields:
        a, b = (np.asarray(getattr(out[k], field)) for k in calls)
        print(f"{field}: max |XLA - native| {np.max(np.abs(a - b)):.2e} "
              f"(largest {np.max(np.abs(a)):.3g})")
    times = bench._interleaved(
        {k: lambda c=c: jax.block_until_ready(c(*args)) for k, c in calls.items()}
        | {"steps": segment}, int(repeats))
    flops = 2 * runs * 2 * m * n_test * d
    print(f"{size} R = {runs}, {runs // group} seeds of {group}, n_test = {n_test}: "
          f"medians of {repeats}")
    for k in calls:
        t = statistics.median(times[k])
        print(f"{k}: {t * 1e3:.1f} ms ({flops / t / 1e9:.0f} GFLOP/s of test products)")
    ratio = statistics.median(times["XLA"]) / statistics.median(times["native"])
    print(f"native / XLA speed: {ratio:.3f}")
    step = statistics.median(times["steps"]) / static.eval_every
    print(f"{static.eval_every} training steps ({'kernel' if static.kernel_step else 'direct'} "
          f"formulation): {step * static.eval_every * 1e3:.1f} ms; the native evaluation takes "
          f"as long as {statistics.median(times['native']) / step:.0f} steps")


def _segment(static, params, groups):
    """A call of ``eval_every`` training steps, on a state of its own (the steps donate it)."""
    state = [train.init_state(params, groups, static=static)]
    gram = train.build_gram(state[0].mask, groups, static=static)
    steps = jax.numpy.int32(static.eval_every)
    program = train.train_steps.lower(state[0], params, groups, steps, static=static,
                                      gram=gram).compile()

    def run():
        state[0] = jax.block_until_ready(program(state[0], params, groups, steps, gram=gram))
    run()  # warm-up
    return run


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(USAGE)
    main(*sys.argv[1:])
