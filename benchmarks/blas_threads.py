"""numpy's BLAS on a square float32 product with one thread and with all of them.

    .venv/bin/python benchmarks/blas_threads.py [SIZE]
    .venv/bin/python benchmarks/blas_threads.py 2048

Best of 5 products of SIZE x SIZE (default 3072) at each thread count, set through the
``scipy_openblas_set_num_threads64_`` of the OpenBLAS that numpy >= 2's Linux wheel ships.
"""

import ctypes
import glob
import os
import sys
import time

import numpy as np

USAGE = """usage: benchmarks/blas_threads.py [SIZE]
  SIZE: the side of the square matrices, a positive integer (default 3072)
example: .venv/bin/python benchmarks/blas_threads.py 2048"""


def main(size=3072):
    size = int(size)
    pattern = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs",
                           "libscipy_openblas64_*")
    lib = ctypes.CDLL(sorted(glob.glob(pattern))[0])
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    for threads in (1, os.cpu_count()):
        lib.scipy_openblas_set_num_threads64_(threads)
        a @ a  # warm-up
        best = min(_seconds(lambda: a @ a) for _ in range(5))
        print(f"{threads} thread(s): {2 * size**3 / best / 1e9:.1f} GFLOP/s")


def _seconds(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


if __name__ == "__main__":
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(USAGE)
        sys.exit(0)
    if not (len(args) <= 1 and all(a.isdigit() and int(a) > 0 for a in args)):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    main(*args)
