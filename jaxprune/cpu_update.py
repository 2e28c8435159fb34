"""The matrix products of plain GD as native calls on the CPU (XLA FFI custom calls):

    P = W Z^T                                   (the forward product, per group; also the
                                                 evaluation's, of W and W(0), and the Gram
                                                 build's, in column blocks where Z has many
                                                 rows)
    a segment of direct steps, loss head included (``direct_steps``):
    W <- where(M, W - Dn Z - [k < s] ds, 0)     (the update: an OpenBLAS sgemm and the mask,
                                                 with AVX2 but not AVX-512 one own kernel)
    Y_f = K_f A_f                               (the kernel formulation's step, K_f symmetric)
    a segment of kernel steps, loss head included (``kernel_steps``), from the segment's
    first P to its update
    JAX's threefry hash, as its lowering on the CPU (``_lower_threefry_natively``)

Runs are independent, so ``direct_steps`` and ``kernel_steps`` give each thread a run (or a
block of runs) to take through all of a segment's steps while its data stay in the core's
caches, the loss head written out in ``cpu_update.cc`` with ``train._gd_factors``' math.
The update's contraction is only n long (n = 100 at paper sizes): there XLA:CPU's own dot
reached 41-58 % of its square-product peak and OpenBLAS's sgemm 78-89 %
(``benchmarks/RESULTS.md``). On CPUs with AVX-512, or AVX2 and FMA, the projections are the
library's own kernel where that pays (``PROJECTIONS``; OpenBLAS's sgemm ran this thin
product at 70-85 % of its square speed, the kernel at 95-98 % with AVX-512 and 91-96 % with
AVX2). ``symmetric_products`` reads each K_f as its upper
triangle only (``pack_upper``), those of ``vector_lanes()`` filters interleaved
(``interleave``) so that it works on that many filters at once: the kernel formulation's
step is bound by reading the K_f (from the caches, where ``kernel_steps``, or in XLA
``train._kernel_loop``, takes a block of runs through a segment's steps together).
It is built on first use with the machine's C++ compiler against jaxlib's FFI headers, cached
(``$JAXPRUNE_CACHE_DIR``, default ``$XDG_CACHE_HOME/jaxprune``, else ``~/.cache/jaxprune``),
and calls the OpenBLAS that numpy's wheel ships.

Where any of that is missing (no compiler, no ILP64 OpenBLAS in numpy, float64, another
platform) the step runs XLA's own products, which give the same numbers to float rounding;
``status()`` says which runs and why. ``JAXPRUNE_NATIVE_UPDATE=0`` turns the native products
off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

__all__ = ["available", "status", "prepare_cpu", "gram_triangles", "projections",
           "direct_steps", "vector_lanes", "pack_upper", "lanes", "interleave", "deinterleave",
           "symmetric_products", "kernel_steps"]

#: The custom calls of ``cpu_update.cc``.
TARGETS = ("jaxprune_projections", "jaxprune_direct_steps", "jaxprune_symmetric_products",
           "jaxprune_kernel_steps", "jaxprune_threefry2x32")
SOURCE = pathlib.Path(__file__).with_name("cpu_update.cc")
#: Flags of the build; -fno-strict-aliasing because the mask is applied to a float's bits,
#: -ffp-contract=off so that ``symmetric_products`` gives the same numbers on every CPU,
#: -fno-trapping-math so that GCC turns the loss head's selects into vector blends where the
#: CPU has no AVX-512 mask registers (values unchanged: it gives up only the FP exception flags).
FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-fno-strict-aliasing", "-ffp-contract=off",
         "-fno-trapping-math")
#: (file pattern under numpy's folder, cblas_sgemm symbol) of the ILP64 OpenBLAS numpy wheels
#: ship: numpy >= 2 (scipy-openblas) and numpy 1.26.
OPENBLAS = (("../numpy.libs/libscipy_openblas64_*", "scipy_cblas_sgemm64_"),
            (".dylibs/libscipy_openblas64_*", "scipy_cblas_sgemm64_"),
            ("../numpy.libs/libopenblas64_*", "cblas_sgemm64_"),
            (".dylibs/libopenblas64_*", "cblas_sgemm64_"))


def cache_bytes(level: int, default: int, lowest: int, highest: int,
                cpu: pathlib.Path = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The first core's cache of ``level`` in bytes (Linux's sysfs), clamped to
    ``[lowest, highest]``; ``default`` where it is unknown (macOS, Windows)."""
    units = {"K": 1 << 10, "M": 1 << 20}
    for index in sorted(cpu.glob("index*")):
        try:
            if (index / "level").read_text().strip() == str(level):
                size = (index / "size").read_text().strip()
                return min(max(int(size[:-1]) * units[size[-1]], lowest), highest)
        except (OSError, ValueError, KeyError, IndexError):
            break
    return default


#: Bytes of W a block of rows of ``projections`` holds: twice one core's L2 cache. Measured
#: for the per-step update and projection call that ``direct_steps`` replaced, whose blocks
#: stayed near the core from the update to the projections (``benchmarks/RESULTS.md``): on a 512 KiB
#: L2, 512 KiB blocks beat 256 KiB by 1.02-1.14x and 1 MiB matched them (1.01x); on a 2 MiB
#: L2, 2 MiB beat 512 KiB by 1.16-1.24x; on a 1 MiB L2 (AMD Zen 5, OpenBLAS's AVX-512
#: kernels), 2 MiB beat 1 MiB by 1.03-1.04x (A/B medians) and 4 MiB matched 2 MiB (with its
#: AVX2 kernels 1, 2 and 4 MiB all ran within 1 %).
BLOCK_BYTES = 2 * cache_bytes(2, 1 << 19, 1 << 18, 1 << 23)  # 256 KiB-8 MiB L2


class Unavailable(Exception):
    """Why the native products cannot run here."""


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("JAXPRUNE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxprune")
    return pathlib.Path(root)


class OpenBlas(NamedTuple):
    """The ILP64 OpenBLAS inside numpy's wheel: its ``cblas_sgemm``, its (global) thread
    count's setter and getter (each of XLA's threads runs a one-thread sgemm: with OpenBLAS's
    own threads beside XLA's, the step ran 2.5x slower on 2 cores) and the kernels it runs (its
    core name, which ``OPENBLAS_CORETYPE`` chooses where it is set)."""

    sgemm: ctypes._CFuncPtr
    set_threads: ctypes._CFuncPtr
    get_threads: ctypes._CFuncPtr
    core: str


def _openblas() -> OpenBlas:
    """numpy's OpenBLAS, 0.3.27 or newer (numpy 2.0's and later)."""
    root = pathlib.Path(np.__file__).parent
    for pattern, symbol in OPENBLAS:
        for path in sorted(root.glob(pattern)):
            lib = ctypes.CDLL(str(path))
            if not hasattr(lib, symbol):
                continue
            try:
                config, get_threads, set_threads = (_function(lib, symbol, name) for name in (
                    "openblas_get_config", "openblas_get_num_threads", "openblas_set_num_threads"))
            except AttributeError as missing:
                raise Unavailable(f"{path.name}: {missing}") from None
            config.restype, get_threads.restype = ctypes.c_char_p, ctypes.c_int
            found = config().decode().split()[:2]  # "OpenBLAS 0.3.27 DYNAMIC_ARCH ..."
            version = re.match(r"(\d+)\.(\d+)\.(\d+)", found[-1] if found else "")
            if version is None or tuple(map(int, version.groups())) < (0, 3, 27):
                raise Unavailable(f"{path.name} is older than OpenBLAS 0.3.27 "
                                  f"({' '.join(found)})")
            return OpenBlas(getattr(lib, symbol), set_threads, get_threads,
                            _core_name(lib, symbol))
    raise Unavailable("numpy carries no ILP64 OpenBLAS (a numpy wheel from PyPI does)")


def _function(lib: ctypes.CDLL, sgemm_symbol: str, name: str) -> ctypes._CFuncPtr:
    """OpenBLAS's function ``name``, with the prefix and suffix its sgemm carries
    (``scipy_openblas_get_config64_``)."""
    return getattr(lib, sgemm_symbol.replace("cblas_sgemm", name))


def _core_name(lib: ctypes.CDLL, sgemm_symbol: str) -> str:
    """The kernels an OpenBLAS runs: its ``openblas_get_corename``."""
    try:
        corename = _function(lib, sgemm_symbol, "openblas_get_corename")
    except AttributeError:
        return "unknown"
    corename.restype = ctypes.c_char_p
    return corename().decode()


def _build() -> pathlib.Path:
    """The compiled library, from the cache or built now (atomically, so that processes
    building at once do not read each other's half-written file)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise Unavailable("no C++ compiler (c++ or g++ on PATH, or $CXX)")
    include = jax.ffi.include_dir()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), compiler.encode(),
                                     " ".join(FLAGS).encode()])).hexdigest()[:16]
    target = _cache_dir() / f"cpu_update-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = pathlib.Path(scratch) / target.name
            result = subprocess.run(
                [compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(built)],
                capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise Unavailable(f"{compiler} failed to build {SOURCE.name}: "
                                  f"{result.stderr.strip()[-2000:]}")
            os.replace(built, target)
    except (OSError, subprocess.TimeoutExpired) as why:
        raise Unavailable(f"could not build {SOURCE.name} into {target.parent}: {why}") from why
    return target


def _register() -> str:
    """Builds, loads and registers the custom calls; returns what runs, or raises
    ``Unavailable``."""
    if os.environ.get("JAXPRUNE_NATIVE_UPDATE", "1") == "0":
        raise Unavailable("turned off by JAXPRUNE_NATIVE_UPDATE=0")
    blas = _openblas()
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as why:
        raise Unavailable(f"cannot load {path} ({why}); delete it to build it again") from why
    lib.jaxprune_set_blas(*(ctypes.cast(f, ctypes.c_void_p)
                            for f in (blas.sgemm, blas.set_threads, blas.get_threads)))
    for target in TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)),
                                    platform="cpu")
    chosen = os.environ.get("OPENBLAS_CORETYPE")
    kernels = f"{blas.core} kernels" + (f", OPENBLAS_CORETYPE={chosen}" if chosen else "")
    builds = {512: "AVX-512", 256: "AVX2"}.get(lib.jaxprune_builds(), "baseline")
    own = ("; W Z^T by its own kernel where it pays"
           if lib.jaxprune_own_projection() else "")
    lanes = f"; Gram matrices read {lib.jaxprune_vector_lanes()} filters at a time"
    threefry = ("; JAX's threefry hash natively" if _lower_threefry_natively() else
                "; JAX's threefry hash as JAX lowers it (its internals have moved)")
    return (f"native: {blas.sgemm.__name__} of numpy's OpenBLAS ({kernels}); its own kernels' "
            f"{builds} builds{own}{lanes}{threefry}, built at {path}")


def _lower_threefry_natively() -> bool:
    """Makes ``jaxprune_threefry2x32`` the CPU lowering of JAX's ``threefry2x32`` primitive,
    the hash behind every ``jax.random`` draw (as JAX's own CUDA kernel is on GPUs): the same
    bits, since the hash is integer arithmetic, and ``train.make_groups`` compiled in 0.6-0.9 s
    instead of 1.5-2.8 s and ran 1.0-1.9x faster than with JAX's rolled loop of 5 passes over
    the counters (``benchmarks/RESULTS.md``, 2026-12-06, 21:22 UTC). It reaches into JAX's
    internals; where they are not where this expects, JAX's own lowering stays. Returns
    whether it is registered."""
    try:
        from jax._src.interpreters import mlir
        primitive = None
        for module in ("jax._src.random.threefry2x32", "jax._src.prng"):
            try:
                primitive = importlib.import_module(module).threefry2x32_p
                break
            except (ImportError, AttributeError):
                continue
        if primitive is None:
            return False
    except ImportError:
        return False
    hash_lowering = jax.ffi.ffi_lowering("jaxprune_threefry2x32")

    def lowering(ctx, *operands):
        # As JAX's CUDA lowering: the keys and counters broadcast to the outputs' shape.
        aval_out = ctx.avals_out[0]
        if 0 in aval_out.shape:
            zeros = mlir.full_like_aval(ctx, 0, aval_out)
            return [zeros, zeros]
        rank = len(aval_out.shape)
        broadcast = [mlir.broadcast_in_dim(ctx, x, aval_out, broadcast_dimensions=range(
            rank - len(aval.shape), rank)) for x, aval in zip(operands, ctx.avals_in)]
        return hash_lowering(ctx.replace(avals_in=(aval_out,) * 4), *broadcast)

    mlir.register_lowering(primitive, lowering, platform="cpu")
    return True


@functools.cache
def _outcome() -> str | Unavailable:
    """``_register()``'s status, or why it failed, once per process: ``functools.cache`` does
    not cache an exception, so a failed build would run the compiler again (seconds, up to its
    300 s timeout) on every ``status()`` and ``available()``."""
    try:
        return _register()
    except Unavailable as why:
        return why


def _load() -> str:
    """Registers the custom calls once; returns what runs, or raises ``Unavailable``."""
    outcome = _outcome()
    if isinstance(outcome, Unavailable):
        raise outcome.with_traceback(None)  # the cached one, without the last raise's frames
    return outcome


def status() -> str:
    """Which products the CPU step runs: "native: ..." or "XLA: <why not native>"."""
    try:
        return _load()
    except Unavailable as why:
        return f"XLA: {why}"


def prepare_cpu() -> None:
    """Builds and registers the native calls where the CPU is JAX's default backend (nothing
    elsewhere), so that what is lowered next can use them: among them JAX's threefry hash
    (``_lower_threefry_natively``), which ``train.make_groups`` lowers."""
    if jax.default_backend() == "cpu":
        status()


def available(dtype=np.float32) -> bool:
    """Whether the native products can run for weights of ``dtype`` (float32 only)."""
    return np.dtype(dtype) == np.float32 and status().startswith("native")


def gram_triangles(dtype=np.float32) -> bool:
    """Whether the kernel formulation keeps its Gram matrices as upper triangles, read by
    ``symmetric_products`` (half the bytes of full ones): where the native products run and
    the CPU is JAX's default backend (checked first: no build where an accelerator runs)."""
    return jax.default_backend() == "cpu" and available(dtype)


#: Who forms ``W Z^T``: OpenBLAS's sgemm ("blas"), the library's own kernel wherever the CPU
#: has AVX-512, or AVX2 and FMA ("own"), or that kernel where it pays and sgemm elsewhere
#: ("auto", the default): where n >= 16 (``OwnPays`` in ``cpu_update.cc``) and a block has
#: ``OWN_MIN_BLOCK_ROWS`` rows or more. It reads each group's Z packed: once per call where a
#: group's rows take several blocks, else by each block. Without either, sgemm.
PROJECTIONS = {"blas": 0, "auto": 1, "own": 2}
#: ``kOwnMinBlockRows`` of ``cpu_update.cc``.
OWN_MIN_BLOCK_ROWS = 32


def own_projection() -> bool:
    """Whether the own projection kernel runs on this CPU (it needs AVX-512, or AVX2 and
    FMA)."""
    return available() and bool(ctypes.CDLL(str(_build())).jaxprune_own_projection())


def projections(w, z, block_bytes: int = BLOCK_BYTES, projection: str = "auto",
                column_bytes: int = 0, first_group=0) -> jax.Array:
    """``W Z^T`` per group, ``(S, F, n)``, from W ``(S, F, d)`` and groups ``first_group`` to
    ``first_group + S - 1`` of Z ``(S', n, d)`` (a scalar, traced or not: a slice of Z that
    XLA does not copy), in blocks of rows of about ``block_bytes``, each also cut into blocks of
    about ``column_bytes`` of Z (a multiple of 16 of its rows) where that is > 0; on the CPU
    only."""
    _load()
    shape = jax.ShapeDtypeStruct(w.shape[:2] + z.shape[1:2], w.dtype)
    return jax.ffi.ffi_call("jaxprune_projections", shape)(
        w, z, jnp.asarray(first_group, jnp.int32), block_bytes=np.int64(max(1, block_bytes)),
        projection=np.int64(PROJECTIONS[projection]), column_bytes=np.int64(max(0, column_bytes)))


def direct_steps(w, z, mask, b, diverged, head, num_steps, *, power: float, support: int,
                 bias: bool) -> tuple[jax.Array, ...]:
    """``num_steps`` steps of the direct formulation's plain GD (``train._direct_step``, its
    loss head ``train._gd_factors`` included), each thread taking one run at a time through
    all the steps; on the CPU only. Shapes: Z ``(S, n, d)``; W and M any shape of S F rows
    of d, such as the state's own (a donated W that reaches the call reshaped, XLA copies out
    and back); ``b`` ``(S, G, 2, m)`` (zeros where ``bias`` is false); ``diverged``
    ``(S, G)``; ``head`` = (noise_std, signal_norm, learning_rate) ``(S, G, 3)``, observed
    labels and example weights ``(S, G, n)``, clean labels ``(S, n)``, filter weights
    ``(S, G, m)``, halved for mean pooling; ``b``, ``diverged`` and ``head`` also in any shape
    of as many. Returns the new W, ``b`` and ``diverged``, in place of the old."""
    return _segment("jaxprune_direct_steps", (w, z, mask, b, diverged, *head), num_steps,
                    power, support, bias)


def kernel_steps(w, z, mask, b, diverged, head, upper, num_steps, *, power: float,
                 support: int, bias: bool) -> tuple[jax.Array, ...]:
    """``num_steps`` steps of the kernel formulation's plain GD (``train._kernel_step``, its
    loss head ``train._gd_factors`` included, then ``train._blocked_update``), each thread
    taking a block of the fewest runs that hold whole sets of lanes through all the steps,
    from their projections ``P0'`` to their new W; on the CPU only. Shapes as
    ``direct_steps`` takes them; ``upper`` the ``interleave``d triangles of the
    (n + 1) x (n + 1) ``K'_f``. Returns the new W, ``b`` and ``diverged``, in place of the
    old."""
    return _segment("jaxprune_kernel_steps", (w, z, mask, b, diverged, *head, upper), num_steps,
                    power, support, bias)


def _segment(target: str, operands, num_steps, power: float, support: int,
             bias: bool) -> tuple[jax.Array, ...]:
    """A segment call: W, the biases and the diverged flags (``operands[0]``, ``[3]``,
    ``[4]``) come back updated in place."""
    _load()
    aliases = {0: 0, 3: 1, 4: 2}
    shapes = tuple(jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in aliases)
    call = jax.ffi.ffi_call(target, shapes, input_output_aliases=aliases)
    return call(*operands, jnp.asarray(num_steps, jnp.int32), power=np.float32(power),
                support=np.int64(support), bias=np.int64(bias))


@functools.cache
def vector_lanes() -> int:
    """Filters whose triangles ``symmetric_products`` reads interleaved, one vector of floats:
    16 where the CPU has AVX-512, else 8 (AVX2; also where the native products do not run)."""
    if not available():
        return 8
    return int(ctypes.CDLL(str(_build())).jaxprune_vector_lanes())


def pack_upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) indices of an n x n matrix's upper triangle in the order
    ``symmetric_products`` reads it: row by row, ``K[0, 0..n-1], K[1, 1..n-1], ...``."""
    return np.triu_indices(n)


def lanes(filters: int) -> int:
    """Filters interleaved in the triangles of ``filters`` filters: ``vector_lanes()``, or the
    largest power of 2 under it that divides ``filters``."""
    return math.gcd(filters, vector_lanes())


def interleave(upper) -> jax.Array:
    """Triangles ``(..., F, k)`` as ``(..., F / L, k, L)``, L = ``lanes(F)``: the layout
    ``symmetric_products`` reads."""
    F, k = upper.shape[-2:]
    L = lanes(F)
    return jnp.swapaxes(upper.reshape(upper.shape[:-2] + (F // L, L, k)), -1, -2)


def deinterleave(upper) -> jax.Array:
    """``interleave``'s ``(..., F / L, k, L)`` as ``(..., F, k)``."""
    upper = jnp.swapaxes(upper, -1, -2)
    return upper.reshape(upper.shape[:-3] + (-1, upper.shape[-1]))


def symmetric_products(upper, a) -> jax.Array:
    """``K_f A_f`` of every filter, ``(S, F, n)``, from the upper triangles of the symmetric
    K_f in ``pack_upper``'s order, ``interleave``d: ``(S, F / L, n (n + 1) / 2, L)``, and A
    ``(S, F, n)``; on the CPU only."""
    _load()
    return jax.ffi.ffi_call("jaxprune_symmetric_products",
                            jax.ShapeDtypeStruct(a.shape, a.dtype))(upper, a)
