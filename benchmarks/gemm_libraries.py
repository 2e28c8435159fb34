"""The direct GD step's two matrix products, alone, in each matrix library at hand.

    .venv/bin/python benchmarks/gemm_libraries.py [--sizes paper-d1000 ...] [--runs 256 ...]

For the ``shared`` layout (one seed, R runs: F = R * 2m filter rows) the step multiplies

    forward   (F x d) @ (d x n)             P = W Z^T
    gradient  (rows x n) @ (n x d)          Dn Z, in blocks of ``rows`` (``train.BLOCK_BYTES``)

and this script times each shape (medians of repeats after a warm-up, one implementation
after the other, each call after a short rest, ``REST``) in: XLA:CPU as the step is compiled
(``train.COMPILER_OPTIONS``: YNNPACK fusions off), XLA:CPU with its defaults (YNNPACK dots),
numpy's BLAS (``np.matmul(out=)``) and PyTorch's (``torch.matmul(out=)``, if installed), next
to the square ``jnp.dot`` peak that ``jaxprune bench`` uses. A last row per size times the
step's whole update loop (``train._blocked_update``: every block's gradient product and the
masked update) in XLA. It answers how far the step's products could go with another library:
the step cannot reach a larger share of the peak than its products do.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, train  # noqa: E402

#: Products per timed call (XLA: one ``fori_loop``; the libraries: a Python loop).
CALL = 10
#: Seconds of rest before each timed call, so that worker threads still spinning after one
#: library's last product do not share the cores with the next library's.
REST = 0.3


def xla_product(a, b, options):
    """``a @ b`` CALL times in one program, into a fresh output each time (as ``out=`` in the
    libraries); the small operand changes each time, so the product is not hoisted out of the
    loop."""
    small = 0 if a.size < b.size else 1

    def body(_, carry):
        _, ops = carry
        out = ops[0] @ ops[1]
        ops = list(ops)
        ops[small] = ops[small] * jnp.float32(1.0000001)
        return out, tuple(ops)

    f = jax.jit(lambda a, b: jax.lax.fori_loop(
        0, CALL, body, (jnp.zeros((a.shape[0], b.shape[1]), a.dtype), (a, b)))[0],
        compiler_options=options)
    f = f.lower(a, b).compile()
    return lambda: jax.block_until_ready(f(a, b))


def numpy_product(a, b):
    """``np.matmul(a, b, out=)`` CALL times."""
    a, b = np.asarray(a).copy(), np.asarray(b).copy()
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)

    def run():
        for _ in range(CALL):
            np.matmul(a, b, out=out)
    return run


def torch_product(a, b, threads):
    """``torch.matmul(a, b, out=)`` CALL times on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.from_numpy(np.asarray(a).copy()), torch.from_numpy(np.asarray(b).copy())
    out = torch.empty(a.shape[0], b.shape[1])

    def run():
        for _ in range(CALL):
            torch.matmul(a, b, out=out)
    return run


def xla_update_loop(size: str, runs: int):
    """``train._blocked_update`` of a ``shared`` chunk, CALL times in one program."""
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, runs, "shared"))
    params, seeds = bench.case_inputs(static)
    groups = train.make_groups(seeds, static)
    state = train.init_state(params, groups, static)
    F = runs * 2 * m
    w, mask = state.net.w.reshape(1, F, d), state.mask.reshape(1, F, d)
    step_noise = jnp.full((1, F, n), 1e-4, w.dtype)
    step_support = jnp.zeros((1, F, 1), w.dtype)
    z = groups.train.noise

    def loop(w):
        return jax.lax.fori_loop(0, CALL, lambda _, w: train._blocked_update(
            w, step_noise, step_support, mask, z, static, train.BLOCK_BYTES), w)

    f = jax.jit(loop, donate_argnums=0, compiler_options=train.COMPILER_OPTIONS)
    f = f.lower(w).compile()
    holder = [w]

    def run():
        holder[0] = jax.block_until_ready(f(holder[0]))
    return run, (F, n, d)


def shapes(size: str, runs: int) -> dict[str, tuple[int, int, int]]:
    """``{name: (M, K, N)}`` of the step's two products at a bench size and R (``shared``)."""
    d, n, m = bench.SIZE_SETS[size]
    static = bench.case_static(bench.Case(size, d, n, m, runs, "shared"))
    _, k = train._run_blocks(static, train.BLOCK_BYTES)
    return {"forward": (runs * 2 * m, d, n), "gradient block": (k * 2 * m, n, d)}


def timed(run, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``run`` after a warm-up, each after a rest."""
    run()
    times = []
    for _ in range(repeats):
        time.sleep(REST)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def row(size, runs, product, shape, times, peak) -> str:
    """A markdown row: GFLOP/s (and share of the peak) of each implementation's median."""
    M, K, N = shape
    gflops = [2.0 * M * K * N * CALL / statistics.median(t) / 1e9 for t in times]
    return (f"| {size} | {runs} | {product} | {M} x {K} x {N} | "
            + " | ".join(f"{g:.0f} ({g / peak:.0%})" for g in gflops) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="example: .venv/bin/python benchmarks/gemm_libraries.py --sizes paper-d1000 "
               "--runs 256")
    parser.add_argument("--sizes", nargs="+", default=["paper-d1000", "paper-d2000"],
                        choices=sorted(bench.SIZE_SETS))
    parser.add_argument("--runs", nargs="+", type=int, default=[256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False

    peak = bench.matmul_peak()["best_gflops"]
    print(f"float32 square jnp.dot peak: {peak:.1f} GFLOP/s; {CALL} products per call, "
          f"medians of {args.repeats}; load average {bench._loadavg()}\n")
    names = ["XLA (step options)", "XLA (defaults)", "numpy BLAS"] + (["torch"] * have_torch)
    print("| sizes | R | product | M x K x N | " + " | ".join(names) + " |")
    print("|---|---:|---|---|" + "---:|" * len(names))
    for size in args.sizes:
        for runs in args.runs:
            for product, (M, K, N) in shapes(size, runs).items():
                a = jax.random.normal(jax.random.key(0), (M, K), jnp.float32)
                b = jax.random.normal(jax.random.key(1), (K, N), jnp.float32)
                impls = [xla_product(a, b, train.COMPILER_OPTIONS), xla_product(a, b, {}),
                         numpy_product(a, b)]
                if have_torch:
                    impls.append(torch_product(a, b, args.threads))
                times = [timed(impl, args.repeats) for impl in impls]
                print(row(size, runs, product, (M, K, N), times, peak), flush=True)
            update, (M, K, N) = xla_update_loop(size, runs)
            print(row(size, runs, "update loop (XLA step)", (M, K, N),
                      [timed(update, args.repeats)], peak), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
