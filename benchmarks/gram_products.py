"""The kernel formulation's step product ``K_f A_f`` alone, in its three forms.

    .venv/bin/python benchmarks/gram_products.py [SIZE [RUNS [REPEATS]]]
    .venv/bin/python benchmarks/gram_products.py quickstart 256 25

For F = 2 m R filters at the sizes of one bench case (``jaxprune.bench.SIZE_SETS``, default
the quick sweep's, R = 256): XLA's batched matrix-vector product of the full K_f (the step off
the CPU), XLA's of the upper triangles unpacked first, and the native product of the
interleaved upper triangles (``cpu_update.symmetric_products``, the step on the CPU), each
jitted, timed in alternation (``bench._interleaved``, medians of REPEATS after a warm-up),
with the bytes of K each reads per second and its largest deviation from a float64 product.
"""

import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, cpu_update, train  # noqa: E402

USAGE = f"""usage: benchmarks/gram_products.py [SIZE [RUNS [REPEATS]]]
  SIZE: {", ".join(bench.SIZE_SETS)} (default quickstart); RUNS (default 256) and
  REPEATS (default 25): positive integers
example: .venv/bin/python benchmarks/gram_products.py quickstart 256 25"""


def main(size="quickstart", runs=256, repeats=25):
    runs, repeats = int(runs), int(repeats)
    _, n, m = bench.SIZE_SETS[size]
    filters = 2 * m * runs
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, filters, n, n + 3), dtype=np.float32)
    full = x @ np.swapaxes(x, -1, -2)  # symmetric, as the Gram matrices are
    a = rng.standard_normal((1, filters, n), dtype=np.float32)
    i, j = cpu_update.pack_upper(n)
    upper = cpu_update.interleave(full[..., i, j])
    exact = np.einsum("sfij,sfj->sfi", full.astype(np.float64), a)
    forms = {"XLA, full K": (jax.jit(train._full_gram_products), full),
             "XLA, triangles unpacked": (jax.jit(train._unpacked_gram_products), upper),
             "native, triangles": (jax.jit(cpu_update.symmetric_products), upper)}
    args = {name: (jax.device_put(k), jax.device_put(a)) for name, (_, k) in forms.items()}
    calls = {name: (lambda f=f, k=args[name]: jax.block_until_ready(f(*k)))
             for name, (f, _) in forms.items()}
    for name, call in calls.items():
        error = np.abs(np.asarray(call()) - exact).max() / np.abs(exact).max()
        print(f"{name}: max |error| / max |K A| = {error:.1e}")
    times = bench._interleaved(calls, repeats)
    print(f"{size}: F = {filters} filters of n = {n}, R = {runs}; {cpu_update.status()}")
    for name, (_, k) in forms.items():
        seconds = statistics.median(times[name])
        print(f"  {name:24s} {seconds * 1e3:7.2f} ms  {k.nbytes / seconds / 1e9:5.1f} GB/s of K "
              f"({k.nbytes / 1e6:.0f} MB)")


if __name__ == "__main__":
    main(*bench.script_args(USAGE, lambda a: (
        len(a) <= 3 and all(x in bench.SIZE_SETS for x in a[:1]) and bench.positive_ints(a[1:]))))
