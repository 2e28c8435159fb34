"""A chunk's data and draws (``train.make_groups``) with JAX's threefry lowering and with the
native hash (``cpu_update._lower_threefry_natively``): compile time and run time.

    .venv/bin/python benchmarks/data_draws.py SIZE RUNS LAYOUT N_TEST [REPEATS [ROUNDS]]
    .venv/bin/python benchmarks/data_draws.py paper-d1000 128 seeds 2000

For one bench case (``jaxprune.bench.SIZE_SETS``, layout ``shared`` or ``seeds``) with N_TEST
test examples: in a fresh process each, with ``JAXPRUNE_NATIVE_UPDATE=0`` (JAX's lowering: the
native calls are off) and without (the native hash), the compile time of ``make_groups`` and
the median of REPEATS calls (default 7); ROUNDS (default 2) pairs of processes, alternating.
The two processes' draws are checked to be the same bits (a digest of every array).
"""

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

USAGE = """usage: benchmarks/data_draws.py SIZE RUNS LAYOUT N_TEST [REPEATS [ROUNDS]]
example: .venv/bin/python benchmarks/data_draws.py paper-d1000 128 seeds 2000"""


def measure(size, runs, layout, n_test, repeats):
    """In this process: prints a JSON line of compile seconds, run seconds, digest."""
    import jax

    from jaxprune import bench, cpu_update, train

    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, int(runs), layout,
                                          n_test=int(n_test)))
    _, seeds = bench.case_inputs(static)
    cpu_update.prepare_cpu()  # the build and registration are not the compile's
    start = time.perf_counter()
    compiled = train.make_groups.lower(seeds, static=static).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        groups = jax.block_until_ready(compiled(seeds))
        times.append(time.perf_counter() - start)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(groups):
        digest.update(memoryview(jax.device_get(leaf)).cast("B"))
    print(json.dumps({"compile": compile_s, "run": statistics.median(times),
                      "digest": digest.hexdigest(), "status": cpu_update.status()[:40]}))


def main(size, runs, layout, n_test, repeats=7, rounds=2):
    results = {"JAX's lowering": [], "native hash": []}
    for _ in range(int(rounds)):
        for name, native in (("JAX's lowering", "0"), ("native hash", "1")):
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"import data_draws; data_draws.measure({size!r}, {runs}, {layout!r}, "
                    f"{n_test}, {repeats})")
            env = dict(os.environ, JAXPRUNE_NATIVE_UPDATE=native)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    digests = {r["digest"] for rs in results.values() for r in rs}
    print(f"{size} R = {runs} {layout}, n_test = {n_test}: same bits: {len(digests) == 1}")
    print("| lowering | compile s | run s (median of each process) |\n|---|---|---|")
    for name, rs in results.items():
        compiles = " / ".join(f"{r['compile']:.2f}" for r in rs)
        runs = " / ".join(f"{r['run']:.3f}" for r in rs)
        print(f"| {name} | {compiles} | {runs} |")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6, 7):
        sys.exit(USAGE)
    main(*sys.argv[1:])
