"""The loss head's share of a direct step: ``train._gd_factors`` alone against the step.

    .venv/bin/python benchmarks/loss_head.py SIZE LAYOUT RUNS
    .venv/bin/python benchmarks/loss_head.py paper-d1000 seeds 256

Jits the loss head (the loss factors from the projections ``W Z^T`` and ``<W, 1_S>``, with the
step's compiler options) for one bench case (``jaxprune.bench.SIZE_SETS``, layout ``shared``
or ``seeds``) and times it against ``train.train_steps`` of 10 steps: medians of 20 calls.
"""

import functools
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, train  # noqa: E402

STEPS = 10
USAGE = f"""usage: benchmarks/loss_head.py SIZE LAYOUT RUNS
  SIZE: {", ".join(bench.SIZE_SETS)}; LAYOUT: shared or seeds; RUNS: a positive integer
example: .venv/bin/python benchmarks/loss_head.py paper-d1000 seeds 256"""


def median_seconds(f, calls=20):
    jax.block_until_ready(f())
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(size, layout, runs):
    runs = int(runs)
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, runs, layout))
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static)
    state = train.init_state(params, groups, static)
    S, G = static.groups, static.group_size
    by_group = lambda a: a.reshape((S, G) + a.shape[1:])  # noqa: E731
    w = state.net.w.reshape(S, G * 2 * m, d)
    carry = train._DirectCarry(w, None if state.net.b is None else by_group(state.net.b),
                               by_group(state.diverged))
    proj = jnp.einsum("sfd,snd->sfn", w, groups.train.noise)
    grouped = jax.tree.map(by_group, params)

    @functools.partial(jax.jit, compiler_options=train.COMPILER_OPTIONS)
    def loss_head(proj, carry):
        return train._gd_factors(proj, train._support_sum(carry.w, static), carry, grouped,
                                 groups.train, static)

    head = median_seconds(lambda: loss_head(proj, carry))
    holder = [state]

    def steps():
        holder[0] = train.train_steps(holder[0], params, groups, jnp.int32(STEPS), static=static)
        return holder[0]

    step = median_seconds(steps) / STEPS
    products = bench.step_flops(static) * runs / (step - head) / 1e9
    print(f"{size} {layout} R={runs}: loss head {head * 1e3:.2f} ms, step {step * 1e3:.2f} ms "
          f"({head / step:.0%}); the rest at {products:.1f} GFLOP/s")


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        len(a) == 3 and a[0] in bench.SIZE_SETS and a[1] in bench.LAYOUTS
        and bench.positive_ints(a[2:]))))
