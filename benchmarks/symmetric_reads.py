"""How fast the kernel formulation's products read their Gram triangles, by working set.

    .venv/bin/python benchmarks/symmetric_reads.py [N]

The kernel formulation's step is ``Y_f = K'_f C_f`` for every filter (``cpu_update.
symmetric_products``: the upper triangles of the (n + 1) x (n + 1) ``K'_f``, a vector's
worth of filters interleaved) and the loss head; the products are about 80 % of it at the
paper's sizes. This times the products alone, repeated in one jitted loop, for F filters of
one group (N = n + 1 rows, default 101: the paper's n = 100), from F = 16 (one or two sets
of lanes, in one core's L2 cache; one thread takes them all) up to triangles far past the
last-level cache, and prints the vectors of triangle entries read a second and the bytes
(medians of 5 timings of about 0.3 s each).
In the step, each thread streams a block of runs' triangles (2 MB a run at the paper's sizes)
once a step; compare its rate with these.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import cpu_update  # noqa: E402

FILTERS = (16, 32, 64, 128, 256, 512, 2048, 8192)
ENTRIES = 500_000  # filters x repeats of a timing: about 0.3 s at 1 G vectors/s
TIMINGS = 5


def main(rows: int = 101) -> None:
    lanes = cpu_update.vector_lanes()
    k = rows * (rows + 1) // 2
    print(f"N = {rows} ({k} triangle entries a filter), {lanes} lanes; "
          f"{cpu_update.status()}")
    print("| filters | triangles MB | G vectors/s | GB/s |\n|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for filters in FILTERS:
        upper = jnp.asarray(rng.standard_normal((1, filters // lanes, k, lanes), np.float32))
        a = jnp.asarray(rng.standard_normal((1, filters, rows), np.float32))
        repeats = max(10, ENTRIES // filters)

        @jax.jit
        def products(upper, a):  # each product feeds the next, so none is left out
            return jax.lax.fori_loop(
                0, repeats, lambda _, a: cpu_update.symmetric_products(upper, a) * 1e-3 + a, a)

        jax.block_until_ready(products(upper, a))
        times = []
        for _ in range(TIMINGS):
            start = time.perf_counter()
            jax.block_until_ready(products(upper, a))
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        triangle_bytes = upper.size * 4
        print(f"| {filters:,} | {triangle_bytes / 1e6:.2f} | "
              f"{upper.size / lanes * repeats / seconds / 1e9:.3f} | "
              f"{triangle_bytes * repeats / seconds / 1e9:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and not sys.argv[1].isdigit()):
        sys.exit("usage: benchmarks/symmetric_reads.py [N]   (N = n + 1 rows, default 101)")
    main(*(int(x) for x in sys.argv[1:]))
