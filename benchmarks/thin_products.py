"""The native step's two sgemm calls on one thread, against a square sgemm on that thread.

    .venv/bin/python benchmarks/thin_products.py [--sizes paper-d1000 ...] [--mkl PATH]

The native call (``jaxprune/cpu_update.cc``) runs, on each of XLA's threads with a one-thread
BLAS, blocks of ``rows`` rows of W (about ``cpu_update.BLOCK_BYTES``, never more than one
group's: 2m x 256 rows for ``shared`` at R = 256, 2m for ``seeds``), each with two calls:

    update      W <- W - Dn Z        (rows x n) @ (n x d), beta = 1 into W
    projection  P <- W Z^T           (rows x d) @ (n x d)^T

This script makes the same ``cblas_sgemm`` calls in numpy's OpenBLAS (the library the native
call uses) and, where the ``mkl`` wheel is installed (``pip install mkl``, or ``--mkl`` naming
its ``libmkl_rt``), in MKL's sequential layer, each interleaved with a square 1024 one of the
same library: medians of ``--repeats`` timings of about ``WORK`` FLOP each. The step can reach
no larger share of the square peak than these calls do. Where the CPU has AVX-512, or AVX2
and FMA, a second table times the projection by the library's own kernel (``ProjectRows``, Z
packed once before the timing, as the native call packs it once per call) beside OpenBLAS's.
"""

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads OpenBLAS
os.environ["MKL_THREADING_LAYER"] = "SEQUENTIAL"  # one thread, no OpenMP runtime

import argparse  # noqa: E402
import ctypes  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxprune import bench, cpu_update  # noqa: E402

#: FLOP per timed call.
WORK = 2e9
#: CBLAS_ORDER and CBLAS_TRANSPOSE values.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def sgemms(mkl: str | None) -> dict:
    """The ILP64 ``cblas_sgemm`` of each library at hand, by name."""
    found = {"openblas": cpu_update._openblas()[0]}
    candidates = [mkl] if mkl else sorted(str(p) for p in (Path(sys.prefix) / "lib").glob(
        "libmkl_rt.so*"))
    if candidates:
        found["mkl"] = ctypes.CDLL(candidates[0]).cblas_sgemm_64
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for sgemm in found.values():
        sgemm.argtypes = [ctypes.c_int] * 3 + [i64] * 3 + [ctypes.c_float, ptr, i64, ptr, i64,
                                                          ctypes.c_float, ptr, i64]
    return found


def call(sgemm, m: int, k: int, n: int, transposed: bool, beta: float):
    """``C (m x n) <- A (m x k) @ B + beta C`` with B stored ``n x k`` where ``transposed``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if transposed else (k, n), dtype=np.float32)
    c = np.zeros((m, n), np.float32)
    args = (ROW_MAJOR, NO_TRANS, TRANS if transposed else NO_TRANS, m, n, k, 1.0,
            a.ctypes.data, k, b.ctypes.data, k if transposed else n, beta, c.ctypes.data, n)
    return lambda: sgemm(*args), (a, b, c)  # the arrays keep the pointers alive


def interleaved_gflops(runs: dict, repeats: int) -> dict:
    """GFLOP/s of each ``name: (run, flop)``: medians of timings interleaved over all of them,
    so that all see the same machine (its speed drifts by 2x within minutes)."""
    times = {key: [] for key in runs}
    for run, _ in runs.values():
        run()
    for _ in range(repeats):
        for key, (run, flop) in runs.items():
            inner = max(1, round(WORK / flop))
            start = time.perf_counter()
            for _ in range(inner):
                run()
            times[key].append((time.perf_counter() - start) / inner)
    return {key: runs[key][1] / statistics.median(t) / 1e9 for key, t in times.items()}


def gflops(libraries: dict, shape: tuple, repeats: int) -> tuple[dict, dict]:
    """GFLOP/s of one call ``shape = (m, k, n, transposed, beta)`` and of the square product,
    in each library, interleaved."""
    square = (1024, 1024, 1024, False, 0.0)
    flops = {"call": 2 * shape[0] * shape[1] * shape[2], "square": 2 * 1024 ** 3}
    calls = {(name, which): call(sgemm, *s) for name, sgemm in libraries.items()
             for which, s in (("call", shape), ("square", square))}
    speed = interleaved_gflops({key: (run, flops[key[1]]) for key, (run, _) in calls.items()},
                               repeats)
    return ({name: speed[name, "call"] for name in libraries},
            {name: speed[name, "square"] for name in libraries})


def own_projection(rows: int, d: int, n: int, repeats: int) -> tuple[float, float, float]:
    """GFLOP/s of the projection ``(rows x d) @ (n x d)^T`` by the own kernel and by
    OpenBLAS's sgemm, and of OpenBLAS's square 1024 product, interleaved on this thread."""
    lib = ctypes.CDLL(str(cpu_update._build()))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.jaxprune_pack_noise.argtypes = [ptr, i64, i64, ptr]
    lib.jaxprune_packed_width.argtypes, lib.jaxprune_packed_width.restype = [i64], i64
    lib.jaxprune_project_rows.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64]
    rng = np.random.default_rng(0)
    c = rng.standard_normal((rows, d), dtype=np.float32)
    z = rng.standard_normal((n, d), dtype=np.float32)
    zt = np.empty(lib.jaxprune_packed_width(n) * d, np.float32)
    zeros = np.zeros(d, np.float32)
    p = np.empty((rows, n), np.float32)
    lib.jaxprune_pack_noise(z.ctypes.data, n, d, zt.ctypes.data)
    own = (lambda: lib.jaxprune_project_rows(c.ctypes.data, rows, z.ctypes.data,  # noqa: E731
                                             zt.ctypes.data, zeros.ctypes.data,
                                             p.ctypes.data, n, d))
    sgemm = sgemms(None)["openblas"]
    blas = call(sgemm, rows, d, n, True, 0.0)  # (run, arrays): they keep the pointers alive
    square = call(sgemm, 1024, 1024, 1024, False, 0.0)
    speed = interleaved_gflops({"own": (own, 2 * rows * d * n),
                                "openblas": (blas[0], 2 * rows * d * n),
                                "square": (square[0], 2 * 1024 ** 3)}, repeats)
    exact = c.astype(np.float64) @ z.astype(np.float64).T
    assert np.abs(p - exact).max() <= 1e-5 * np.abs(exact).max(), "own kernel is wrong"
    return speed["own"], speed["openblas"], speed["square"]


def block_rows(group_rows: int, d: int) -> int:
    """Rows of W in one block of the native call (``RowBlocks`` in ``cpu_update.cc``): a
    group's rows cut into equal blocks of at most about ``BLOCK_BYTES``."""
    blocks = -(-group_rows * 4 * d // cpu_update.BLOCK_BYTES)
    return -(-group_rows // blocks)


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="example: .venv/bin/python benchmarks/thin_products.py --sizes paper-d1000")
    parser.add_argument("--sizes", nargs="+", default=["paper-d1000", "paper-d2000"],
                        choices=sorted(bench.SIZE_SETS))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--mkl", help="path of MKL's libmkl_rt (default: the mkl wheel's)")
    args = parser.parse_args()

    libraries = sgemms(args.mkl)
    names = list(libraries)
    print(f"one thread; blocks of {cpu_update.BLOCK_BYTES >> 10} KiB of W; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| call (M x K x N) | " + " | ".join(f"{name} GFLOP/s (% of its square 1024)"
                                               for name in names)
          + (" | mkl / openblas |" if "mkl" in libraries else " |"))
    print("|---|" + "---:|" * (len(names) + ("mkl" in libraries)))

    def row(label: str, shape: tuple) -> None:
        speed, square = gflops(libraries, shape, args.repeats)
        cells = [f"{speed[name]:.1f} ({speed[name] / square[name]:.0%} of {square[name]:.0f})"
                 for name in names]
        if "mkl" in libraries:
            cells.append(f"{speed['mkl'] / speed['openblas']:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    for size in args.sizes:
        d, n, width = bench.SIZE_SETS[size]
        for layout, group_rows in (("shared", 2 * width * 256), ("seeds", 2 * width)):
            rows = block_rows(group_rows, d)
            row(f"{size} {layout} update {rows} x {n} x {d}", (rows, n, d, False, 1.0))
            row(f"{size} {layout} projection {rows} x {d} x {n}", (rows, d, n, True, 0.0))
    if cpu_update.own_projection():
        print("\n| projection (M x K x N) | own kernel GFLOP/s | openblas GFLOP/s "
              "| own / openblas | own / openblas square 1024 |\n|---|---:|---:|---:|---:|")
        for size in args.sizes:
            d, n, width = bench.SIZE_SETS[size]
            for layout, group_rows in (("shared", 2 * width * 256), ("seeds", 2 * width)):
                rows = block_rows(group_rows, d)
                own, blas, square = own_projection(rows, d, n, args.repeats)
                print(f"| {size} {layout} {rows} x {d} x {n} | {own:.1f} | {blas:.1f} "
                      f"| {own / blas:.2f} | {own / square:.0%} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
