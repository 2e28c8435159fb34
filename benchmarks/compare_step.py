"""Ten GD steps of the engine's ``train.advance`` against the closed-form prototypes, in one
process (R = 256 runs of one seed at paper sizes d = 1000, n = 100, width = 50).

    .venv/bin/python benchmarks/compare_step.py
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prototypes as P  # noqa: E402

from jaxprune import bench  # noqa: E402

STEPS = 10

case = bench.Case("paper-d1000", 1000, 100, 50, 256, "shared")
static = bench.case_static(case)
params, seeds = bench.case_inputs(static)
adv = bench.AdvanceRunner(static, params, seeds)
carry, consts = P.prepare(jax.tree.map(lambda a: a.copy(), adv.state), params, adv.groups,
                          static)


def closed(k, variant):
    global carry
    carry = P.closed_form_advance(carry, consts, jnp.int32(k), static, variant)
    carry.w.block_until_ready()


runners = {"advance": adv.run, "eval": lambda k: adv.run(0),
           "closed": lambda k: closed(k, "closed"), "blocked": lambda k: closed(k, "blocked")}
for f in runners.values():
    f(1)
flop = bench.step_flops(static) * case.runs
for _ in range(2):
    times = {}
    for name, f in runners.items():
        t = time.perf_counter()
        f(0 if name == "eval" else STEPS)
        times[name] = time.perf_counter() - t
    times["advance"] -= times.pop("eval")
    print(", ".join(f"{k} {flop * STEPS / v / 1e9:.1f} GFLOP/s" for k, v in times.items()),
          f"(load {open('/proc/loadavg').read().split()[0]})")
