"""Where the training step's time goes: per-op times from JAX's profiler, split into the
matrix products (fusions that contain a ``dot``) and everything else (elementwise work,
reductions, copies).

Run (the XLA flag makes XLA:CPU emit one trace event per executed op; set it for this script
only, it is not needed otherwise)::

    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \\
        .venv/bin/python benchmarks/profile_step.py --sizes paper-d1000 --runs 256 1024

For each case it traces ``K`` steps of ``train.advance`` (and of the prototypes in
``benchmarks/prototypes.py``), drops the ops that run once per call (the final evaluation of
``advance``), and prints a markdown table: step time, time in GEMM ops, in the rest, and the
slowest ops with their HLO shapes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prototypes as P  # noqa: E402

from jaxprune import bench  # noqa: E402


def _op_table(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {'shape', 'gemm'} from a compiled module's text (a fusion counts as
    a GEMM when its fused computation holds a ``dot``)."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line.strip())
        if m and not line.startswith(" "):
            current = m.group(1)
            computations[current] = []
        elif current is not None:
            computations[current].append(line)
    has_dot = {name: any(" dot(" in ln for ln in body) for name, body in computations.items()}
    ops = {}
    for body in computations.values():
        for line in body:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\(", line)
            if not m:
                continue
            name, shape, kind = m.groups()
            called = re.findall(r"calls=%([\w.\-]+)", line)
            gemm = kind == "dot" or any(has_dot.get(c, False) for c in called)
            ops[name] = {"shape": shape, "kind": kind, "gemm": gemm}
    return ops


def profile(fn, steps: int, hlo_text: str) -> dict:
    """Traces ``fn()`` (which runs ``steps`` steps); per-op totals of the ops that ran at
    least ``steps`` times (the loop body)."""
    folder = tempfile.mkdtemp(prefix="jaxprune-profile-")
    try:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        fn()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ops = _op_table(hlo_text)
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in ops:
            total[e["name"]] += e["dur"] / 1e6
            count[e["name"]] += 1
    body = {k: v / steps for k, v in total.items() if count[k] >= steps}
    gemm = sum(v for k, v in body.items() if ops[k]["gemm"])
    rest = sum(v for k, v in body.items() if not ops[k]["gemm"])
    top = sorted(body.items(), key=lambda kv: -kv[1])[:6]
    return {"gemm_s": gemm, "rest_s": rest,
            "top": [(k, ops[k]["shape"], ops[k]["gemm"], v) for k, v in top]}


def profile_case(case: bench.Case, steps: int = 3) -> list[dict]:
    static = bench.case_static(case)
    params, seeds = bench.case_inputs(static)
    adv = bench.AdvanceRunner(static, params, seeds)
    carry, consts = P.prepare(jax.tree.map(lambda a: a.copy(), adv.state), params, adv.groups,
                              static)
    rows = []
    adv.run(1)
    rows.append({"impl": "advance", **profile(lambda: adv.run(steps), steps,
                                              adv.compiled.as_text())})
    for variant in ("closed", "blocked"):
        c = jax.tree.map(lambda a: a.copy(), carry)
        compiled = P.closed_form_advance.lower(c, consts, jnp.int32(1), static,
                                               variant).compile()
        c = compiled(c, consts, jnp.int32(1))
        c.w.block_until_ready()
        box = [c]

        def go(compiled=compiled, box=box):
            box[0] = compiled(box[0], consts, jnp.int32(steps))
            box[0].w.block_until_ready()

        rows.append({"impl": variant, **profile(go, steps, compiled.as_text())})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["paper-d1000"])
    parser.add_argument("--runs", nargs="+", type=int, default=[256])
    parser.add_argument("--layouts", nargs="+", default=["shared", "seeds"])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if "xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit("set XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true (see the docstring)")
    print(f"load average {os.getloadavg()[0]:.2f}\n")
    print("| sizes | layout | R | impl | step ms | GEMM ops ms | other ops ms | GEMM share "
          "| slowest ops (ms per step) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    for size in args.sizes:
        d, n, width = bench.SIZE_SETS[size]
        for layout in args.layouts:
            for runs in args.runs:
                case = bench.Case(size, d, n, width, runs, layout)
                for r in profile_case(case, args.steps):
                    step = r["gemm_s"] + r["rest_s"]
                    top = "; ".join(f"{'GEMM ' if g else ''}{shape} {1e3 * t:.1f}"
                                    for _, shape, g, t in r["top"][:4])
                    print(f"| {size} | {layout} | {runs} | {r['impl']} | {1e3 * step:.1f} "
                          f"| {1e3 * r['gemm_s']:.1f} | {1e3 * r['rest_s']:.1f} "
                          f"| {100 * r['gemm_s'] / step:.0f} % | {top} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
