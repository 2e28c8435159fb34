"""Throughput of the training step on this machine: ``jaxprune bench``.

What is measured, in one process, interleaved (every implementation runs one timed segment in
turn, repeated), reporting medians of the repeats after warm-up:

- ``advance``: the engine's program, ``train.advance`` = ``train.train_steps`` (one jitted
  ``fori_loop`` of steps) followed by an evaluation. The step is timed as ``train_steps``
  alone, at least ``min(10, eval_every)`` steps a call (a call's fixed cost is spread over
  ``eval_every`` steps in the engine), and ``train.evaluate`` times the evaluation (reported
  separately).
  Subtracting ``t(0)`` from ``t(K)`` instead proved fragile under load when the evaluation
  costs about as much as the K steps.
- ``loop``: the same step as a plain Python loop over runs, one jitted single-run step
  (``train.train_steps`` of one step at R = 1) per run and step.
- ``torch``: ``benchmarks/torch_step.py``, a PyTorch implementation of the batched step
  (closed-form gradient, ``bmm``), with ``torch.set_num_threads(threads)``; only where PyTorch
  (the optional ``bench`` extra) is installed and the repository's ``benchmarks/`` is present.

Work per run-step, counting the two matrix products with the noise patches only (the
pre-activations ``W (2m x d) @ Z^T (d x n)`` and the gradient ``dH (2m x n) @ Z (n x d)``,
``2 * 2m * d * n`` FLOPs each), at the program's padded sizes::

    FLOP per run-step = 8 * m * n * d          (m = width, filters per class)

Not counted: the signal-patch projections (``O(m s n)``), activations, loss and update
(``O(m n)`` and ``O(m d)`` elementwise work). Achieved FLOP/s = run-steps/s * that count; the
machine's float32 matrix-product peak is measured in the same process (square ``jnp.dot`` and
numpy products at several sizes, the best median, at the start and the end), and numpy's
fastest size is timed again in every case's rotation ("peak beside"), so the fraction of peak
compares like with like.

Layouts: ``shared`` = R runs that share one seed (S = 1 group of G = R runs: their products
with the shared data are one GEMM of ``(R*2m x d) @ (d x n)``); ``seeds`` = R seeds with one
run each (S = R, G = 1: R independent batched products).

Also measured: compile time of ``advance`` per shape bucket, peak resident memory of a fresh
process running each configuration against the bytes of its state and data, and the number of
programs a planned sweep over 100 values of ``d`` compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["SIZE_SETS", "Case", "step_flops", "case_static", "case_inputs", "tree_bytes",
           "state_and_data_bytes", "default_cases", "matmul_peak", "AdvanceRunner",
           "LoopRunner", "TorchRunner", "load_torch_step", "measure_case", "memory_profile",
           "compile_count", "run", "format_markdown", "add_arguments", "main", "script_args",
           "positive_ints"]

#: Named sizes: (d, n, width). ``paper-*``: n = 100, width = 50; ``quickstart``: the sizes of
#: ``sweeps/quickstart.toml`` (a test keeps them equal).
SIZE_SETS = {
    "paper-d1000": (1000, 100, 50),
    "paper-d2000": (2000, 100, 50),
    "quickstart": (2000, 30, 20),
}
LAYOUTS = ("shared", "seeds")
#: PyTorch's forms of the batched step (``benchmarks/torch_step.py``): name -> compiled. On
#: the CPU its plain form was the faster from R = 256, ``torch.compile``'s at times at R <= 64
#: (``benchmarks/torch_forms.py``); the tables compare with the faster of those timed.
TORCH_FORMS = {"torch": False, "torch-compiled": True}
#: What ``jaxprune bench`` times by default; ``--quick`` leaves out ``torch.compile``, whose
#: compilation per case takes longer than the case.
IMPLS = ("advance", "loop", "torch", "torch-compiled")
QUICK_IMPLS = ("advance", "loop", "torch")
FULL_RUNS = (16, 64, 256, 1024, 4096)
QUICK_RUNS = (16, 256)


def _jax():
    import jax

    return jax


# ---------------------------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    Attributes:
      size: a name for the sizes (``paper-d1000``, ...).
      d, n, width: the sizes.
      runs: R.
      layout: ``shared`` (S = 1, G = R) or ``seeds`` (S = R, G = 1).
      n_test: test-set size (the step never touches it; kept small so R seeds fit memory).
      dtype: ``float32`` or ``float64``.
      precision: the step's ``matmul_precision`` (``float32`` or ``tensorfloat32``).
      formulation: plain GD's formulation (``Static.formulation``): "auto", the engine's
        choice, or "direct" or "kernel".
    """

    size: str
    d: int
    n: int
    width: int
    runs: int
    layout: str
    n_test: int = 100
    dtype: str = "float32"
    precision: str = "float32"
    formulation: str = "auto"

    @property
    def groups(self) -> int:
        return 1 if self.layout == "shared" else self.runs

    @property
    def group_size(self) -> int:
        return self.runs if self.layout == "shared" else 1


def step_flops(static) -> int:
    """Matrix-product FLOPs of one run-step: ``8 * m * n * d`` (forward + gradient product)."""
    return 8 * static.width * static.n * static.d


def case_static(case: Case, **overrides):
    """The ``Static`` of a case; every option not given takes the sweep files' default."""
    from jaxprune.config import FIELDS
    from jaxprune.spec import STATIC_FIELDS, static_from_row

    row = {k: FIELDS[k].default for k in STATIC_FIELDS}
    row.update(dtype=case.dtype, matmul_precision=case.precision, **overrides)
    sizes = {"d": case.d, "n": case.n, "n_test": case.n_test, "width": case.width}
    static = static_from_row(row, sizes, groups=case.groups, group_size=case.group_size)
    return dataclasses.replace(static, formulation=case.formulation)


def case_inputs(static, seed0: int = 0):
    """Run parameters ``(R,)`` and group seeds ``(S,)`` of a benchmark chunk.

    Group s has seed ``seed0 + s``; the G runs of a group spread their pruning fractions over
    [0, 0.9]. Every other value is the sweep files' default.
    """
    import jax.numpy as jnp

    from jaxprune.config import FIELDS
    from jaxprune.spec import SIZES, SWEPT, run_params_from_table

    S, G = static.groups, static.group_size
    R = S * G
    columns = {k: np.full(R, FIELDS[k].default, np.float64) for k in SWEPT}
    columns["fraction"] = np.tile(np.linspace(0.0, 0.9, G), S)
    for k in SIZES:
        columns[k] = np.full(R, getattr(static, k), np.int64)
    seeds = np.arange(seed0, seed0 + S, dtype=np.uint32)
    columns["seed"] = np.repeat(seeds, G)
    params = run_params_from_table(columns, static.float_dtype)
    jax = _jax()
    return jax.tree.map(jnp.asarray, params), jnp.asarray(seeds)


def tree_bytes(tree) -> int:
    """Bytes of every array leaf of a pytree, from shapes and dtypes (so also of the shapes
    ``jax.eval_shape`` returns)."""
    leaves = (x if hasattr(x, "shape") else np.asarray(x) for x in _jax().tree.leaves(tree))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


def state_and_data_bytes(static) -> tuple[int, int]:
    """Bytes of ``TrainState`` and of (``GroupData`` + ``RunParams``) for a static, from shapes
    only (nothing is allocated)."""
    jax = _jax()
    from jaxprune import train

    params, seeds = jax.eval_shape(lambda: case_inputs(static))
    groups = jax.eval_shape(lambda s: train.make_groups(s, static), seeds)
    state = jax.eval_shape(lambda p, g: train.init_state(p, g, static), params, groups)
    return tree_bytes(state), tree_bytes(groups) + tree_bytes(params)


# ---------------------------------------------------------------------------------------------
# The machine's matrix-product peak.


def accelerated() -> bool:
    """Whether JAX's default backend is an accelerator (GPU or TPU) rather than the CPU."""
    return _jax().default_backend() != "cpu"


def matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 5, dtype: str = "float32",
                precision: str = "float32") -> dict:
    """Products of two square ``N x N`` matrices by XLA (``jnp.dot`` at ``precision``) and,
    on the CPU, by numpy's BLAS (which ``cpu_update`` calls): GFLOP/s per size (median of
    ``repeats``) and the best of them all."""
    jax = _jax()

    def gflops(product, a, b, size):
        seconds = _median_seconds(lambda: product(a, b), repeats, warmups=2)
        return 2.0 * size**3 / seconds / 1e9

    dot = xla_product(precision)
    per_size, blas = {}, {}
    for size in sizes:
        a = jax.random.normal(jax.random.key(0), (size, size), dtype)
        b = jax.random.normal(jax.random.key(1), (size, size), dtype)
        per_size[size] = gflops(dot, a, b, size)
        if not accelerated():  # numpy's products run on the host, not the accelerator
            blas[size] = gflops(np.matmul, np.asarray(a), np.asarray(b), size)
    out = {"per_size_gflops": per_size, "best_gflops": max(*per_size.values(), *blas.values()),
           "precision": precision}
    if blas:
        out["blas_per_size_gflops"] = blas
    return out


def _median_seconds(fn, repeats: int, warmups: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmups`` calls and from a
    settled process (the threads of numpy's last product may still be spinning)."""
    for _ in range(warmups):
        fn()
    _settle()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_bandwidth(size_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """How fast the machine reads memory, the limit of the kernel formulation's step (which
    reads its Gram matrices once a step): GB/s of summing a float32 array of ``size_bytes``
    (far beyond the caches) by XLA (``jnp.sum``) and, on the CPU, by numpy on one thread per
    core (numpy's reductions release the GIL), medians of ``repeats``, and the best."""
    jax = _jax()
    import jax.numpy as jnp

    host = np.ones(max(1, size_bytes // 4), np.float32)

    def gbps(read):
        return host.nbytes / _median_seconds(read, repeats) / 1e9

    def threads_sum(parts):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    device, total = jnp.asarray(host), jax.jit(jnp.sum)
    out = {"bytes": host.nbytes, "xla_gbps": gbps(lambda: total(device).block_until_ready())}
    if not accelerated():
        parts = np.array_split(host, os.cpu_count() or 1)
        out["numpy_gbps"] = gbps(lambda: threads_sum(parts))
    out["best_gbps"] = max(out["xla_gbps"], out.get("numpy_gbps", 0.0))
    return out


def xla_product(precision: str = "float32"):
    """``(a, b) -> a @ b`` by XLA at ``precision`` ("float32" as the step: not TF32), blocking."""
    jax = _jax()
    import jax.numpy as jnp

    dot = jax.jit(functools.partial(jnp.dot, precision=precision))
    return lambda a, b: dot(a, b).block_until_ready()


def fastest_size(peak: dict) -> int:
    """The size of the fastest product of a ``matmul_peak``, numpy's where it was timed (the
    library the CPU step calls), else XLA's."""
    per_size = peak.get("blas_per_size_gflops") or peak["per_size_gflops"]
    return max(per_size, key=per_size.get)


# ---------------------------------------------------------------------------------------------
# Implementations: each has ``run(steps)`` (blocking) and ``weights()``.


class AdvanceRunner:
    """``train.advance`` on a chunk laid out as the case says; compiled ahead of time."""

    name = "advance"

    def __init__(self, static, params, seeds):
        jax = _jax()
        import jax.numpy as jnp

        from jaxprune import train

        self.static, self.params = static, params
        self.groups = train.make_groups(seeds, static)
        self.state = train.init_state(params, self.groups, static)
        jax.block_until_ready((self.groups, self.state))
        # The kernel formulation's Gram matrices, built once per chunk as the engine does.
        build = train.build_gram.lower(self.state.mask, self.groups, static=static).compile()
        t = time.perf_counter()
        self.gram = jax.block_until_ready(build(self.state.mask, self.groups))
        self.gram_s = time.perf_counter() - t if self.gram is not None else None
        t = time.perf_counter()
        self.compiled = train.advance.lower(self.state, params, self.groups, jnp.int32(0),
                                            static=static, gram=self.gram).compile()
        self.compile_s = time.perf_counter() - t
        self.steps_only = train.train_steps.lower(self.state, params, self.groups,
                                                  jnp.int32(0), static=static,
                                                  gram=self.gram).compile()
        self.evaluate_only = train.evaluate.lower(self.state, params, self.groups,
                                                  static=static).compile()
        self.metrics = None

    def run(self, steps: int) -> None:
        """``train.advance``: ``steps`` steps, then the evaluation."""
        import jax.numpy as jnp

        self.state, self.metrics = self.compiled(self.state, self.params, self.groups,
                                                 jnp.int32(steps), gram=self.gram)
        _jax().block_until_ready((self.state, self.metrics))

    def run_steps(self, steps: int) -> None:
        """``train.train_steps`` in segments of ``eval_every`` steps, as the engine calls it
        (what is timed; the evaluations between segments are timed apart, as ``eval_s``)."""
        import jax.numpy as jnp

        while steps > 0:
            segment = min(steps, self.static.eval_every)
            self.state = self.steps_only(self.state, self.params, self.groups,
                                         jnp.int32(segment), gram=self.gram)
            steps -= segment
        _jax().block_until_ready(self.state)

    def evaluate(self) -> None:
        """``train.evaluate``: the metrics ``advance`` ends a segment with."""
        _jax().block_until_ready(self.evaluate_only(self.state, self.params, self.groups))

    def weights(self) -> np.ndarray:
        return np.asarray(self.state.net.w)

    def initial(self):
        """What the other implementations start from: weights, mask, train samples."""
        return self.state, self.groups


class LoopRunner:
    """The same step as a plain loop: one jitted single-run step (``train.train_steps`` of one
    step at R = 1) per run and step.

    Starts from the initial state of an ``AdvanceRunner`` (pass ``state`` and ``groups``
    before that runner has stepped).
    """

    name = "loop"

    def __init__(self, static, params, state, groups):
        jax = _jax()
        import jax.numpy as jnp

        from jaxprune import train

        single = dataclasses.replace(static, groups=1, group_size=1, formulation="direct")
        one = jnp.int32(1)
        self.step = lambda st, p, g: train.train_steps(st, p, g, one, single)  # noqa: E731
        G = static.group_size
        take = lambda tree, i: jax.tree.map(lambda a: a[i:i + 1], tree)  # noqa: E731
        # A group's data is shared by its runs (it is not donated).
        group_of = [take(groups, s) for s in range(static.groups)]
        self.runs = []
        for r in range(static.runs):
            # Every run owns its buffers (they are donated), the step counter included.
            run_state = jax.tree.map(lambda a: a[r:r + 1] if a.ndim else a.copy(), state)  # noqa: B023
            self.runs.append([run_state, take(params, r), group_of[r // G]])
        jax.block_until_ready(self.runs)

    def run(self, steps: int) -> None:
        step = self.step
        for _ in range(steps):
            for run in self.runs:
                run[0] = step(*run)
        _jax().block_until_ready([run[0] for run in self.runs])

    def weights(self) -> np.ndarray:
        return np.concatenate([np.asarray(run[0].net.w) for run in self.runs])


def load_torch_step():
    """The ``TorchStep`` class of ``benchmarks/torch_step.py``, or None with the reason."""
    if importlib.util.find_spec("torch") is None:
        return None, "torch not installed (pip install 'jaxprune[bench]')"
    # OpenMP threads that spin after each parallel region steal the cores XLA's threads need
    # (and vice versa) when both run in one process; passive waiting is faster for both here.
    # Only effective before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _jax().default_backend() == "gpu":
        import torch

        if not torch.cuda.is_available():
            return None, (f"torch {torch.__version__} sees no GPU: its step would run on the "
                          "host CPU, not beside JAX's on the device")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "torch_step.py"
    if not path.exists():
        return None, f"{path} not found (run from a source checkout)"
    spec = importlib.util.spec_from_file_location("jaxprune_torch_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchStep, None


class TorchRunner:
    """``benchmarks/torch_step.TorchStep`` started from the same initial state, on the GPU
    where JAX runs on one (and PyTorch sees it), else on the CPU; with ``compiled``, its step
    under ``torch.compile`` (``TorchStep.compiled``)."""

    def __init__(self, torch_step, static, params, state, groups, threads: int | None = 2,
                 tf32: bool = False, compiled: bool = False):
        jax = _jax()
        host = jax.device_get
        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        self.impl = torch_step(host(state.net.w), host(state.mask), host(params),
                               host(groups.train.noise), host(groups.train.clean),
                               host(groups.train.flip_draw), static, threads=threads,
                               device=device, tf32=tf32)
        self.step = self.impl.compiled() if compiled else self.impl.step

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        if self.impl.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def weights(self) -> np.ndarray:
        return self.impl.weights()


# ---------------------------------------------------------------------------------------------
# Timing.


def _cpu_sample() -> tuple[float, float, float] | None:
    """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / tick  # user..steal, without guest (counted in user)
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def _other_cores(start, end) -> float | None:
    """Cores that other processes kept busy between two ``_cpu_sample``s."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def _settle(window: float = 0.02, timeout: float = 1.0) -> None:
    """Waits (up to ``timeout`` seconds) until this process's threads use under a tenth of a
    core over ``window`` seconds. numpy's OpenBLAS keeps its threads spinning for about 0.1 s
    after each product (PyTorch's for about 8 ms): a segment timed right after the peak's
    product lost a core for that long (at paper-d1000, R = 256, 8,147 run-steps/s against
    8,855 with the spinning off, ``benchmarks/RESULTS.md``). A no-op where the step runs on
    an accelerator, not on the host's cores."""
    if accelerated():
        return
    end = time.perf_counter() + timeout
    used = time.process_time()
    while time.perf_counter() < end:
        time.sleep(window)
        now = time.process_time()
        if now - used < 0.1 * window:
            return
        used = now


def _interleaved(segments: dict, repeats: int, usage: dict | None = None
                 ) -> dict[str, list[float]]:
    """Times each of ``segments`` once per repeat, in rotation, each from a settled process.
    With ``usage``, also puts there each call's ``(system seconds, user seconds, minor page
    faults)`` of the whole process, per segment (``getrusage``)."""
    times = {k: [] for k in segments}
    for _ in range(repeats):
        for name, fn in segments.items():
            _settle()
            before = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if usage is not None:
                after = resource.getrusage(resource.RUSAGE_SELF)
                usage.setdefault(name, []).append((after.ru_stime - before.ru_stime,
                                                   after.ru_utime - before.ru_utime,
                                                   after.ru_minflt - before.ru_minflt))
    return times


def _system_load(calls: list[tuple[float, float, int]], steps: int) -> dict:
    """``system_share``: the share of the calls' CPU time the kernel spent on the process's
    behalf (page faults, thread wake-ups; a copy of the state into fresh memory every call
    showed here first, ``benchmarks/RESULTS.md``), and ``minor_faults_per_step``."""
    system, user, faults = (sum(column) for column in zip(*calls))
    return {"system_share": system / max(system + user, 1e-9),
            "minor_faults_per_step": faults / (len(calls) * steps)}


#: Fewest steps per timed call of the step program (at paper-d1000, ``seeds``, R = 256, one
#: step per call gave 1,744 run-steps/s and 18 steps per call 2,515; ``benchmarks/RESULTS.md``).
MIN_CALL_STEPS = 10


def _steps_for(seconds_per_step: float, target: float, max_steps: int) -> int:
    return int(max(1, min(max_steps, round(target / max(seconds_per_step, 1e-9)))))


def square_product(size: int, precision: str = "float32"):
    """``(segment, flop)``: one product of two square float32 ``size x size`` matrices, to be
    timed beside a case's step: by numpy's BLAS (the library ``cpu_update`` calls) on the CPU,
    by XLA at ``precision`` on an accelerator."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    if accelerated():
        product, a, b = xla_product(precision), _jax().device_put(a), _jax().device_put(b)
    else:
        product = np.matmul
    return (lambda: product(a, b)), 2.0 * size**3


def measure_case(case: Case, impls=QUICK_IMPLS, repeats: int = 5,
                 target_s: float = 0.3, max_steps: int = 200, torch_threads: int = 2,
                 peak_size: int | None = None, log=None) -> dict:
    """Times the implementations on one case, interleaved; medians of ``repeats``.

    With ``peak_size``, a square product of that size (``square_product``) takes its turn in
    the same rotation, so that the case's share of the peak compares the step with the
    machine as it was while the step was timed (on a shared machine other work comes and
    goes over a pass).

    Returns:
      A dict with the case, ``flop_per_run_step``, ``compile_s`` (of ``advance``), ``eval_s``
      (``train.evaluate``, which ``advance`` ends each segment with), ``gram_s`` (building the
      kernel formulation's Gram matrices, once per chunk; None for the direct one),
      ``other_cores`` (CPU other processes used while timing), ``peak_gflops`` (the square
      product timed beside the step; None without ``peak_size``), and per implementation
      ``steps`` (per timed
      segment), ``step_s`` (median seconds per step of all R runs), ``run_steps_per_s``,
      ``gflops``, ``system_share`` and ``minor_faults_per_step`` (``_system_load``); or
      ``skipped`` with the reason.
    """
    log = log or (lambda msg: None)
    static = case_static(case)
    params, seeds = case_inputs(static)
    adv = AdvanceRunner(static, params, seeds)
    state0, groups = adv.initial()
    runners = {"advance": adv}
    skipped = {}
    if "loop" in impls:
        runners["loop"] = LoopRunner(static, params, state0, groups)
    forms = [k for k in TORCH_FORMS if k in impls]
    torch_step, why = load_torch_step() if forms else (None, None)
    for name in forms:
        if torch_step is None:
            skipped[name] = why
        else:
            runners[name] = TorchRunner(torch_step, static, params, state0, groups,
                                        torch_threads, tf32=case.precision != "float32",
                                        compiled=TORCH_FORMS[name])
    del state0  # advance donates its state: the copies above own their buffers.

    # Warm-up (compiles the loop step, touches every buffer), then one step each to size K.
    step_fns = {k: (r.run_steps if k == "advance" else r.run) for k, r in runners.items()}
    for k, f in list(step_fns.items()):
        try:
            f(1)
        except Exception as error:  # torch.compile needs a C++ compiler (CPU) or Triton (GPU)
            if k != "torch-compiled":
                raise
            skipped[k] = f"torch.compile failed: {type(error).__name__}: {error}"[:300]
            del step_fns[k], runners[k]
    adv.run(0)
    # A segment of the kernel formulation starts with a product over W and rebuilds W at its
    # end: it is timed in whole segments of eval_every steps, as the engine runs it.
    unit = {k: (static.eval_every if k == "advance" and static.kernel_step else 1)
            for k in step_fns}
    probe = _interleaved({k: (lambda f=f, u=unit[k]: f(u)) for k, f in step_fns.items()}, 1)
    steps = {k: unit[k] * _steps_for(t[0], target_s, max(1, max_steps // unit[k]))
             for k, t in probe.items()}
    # Each call of the step program has a fixed cost (its loop's inputs are set up once per
    # call), which the engine spreads over eval_every steps: time at least MIN_CALL_STEPS.
    steps["advance"] = max(steps["advance"], min(MIN_CALL_STEPS, static.eval_every))
    segments = {k: (lambda f=f, s=steps[k]: f(s)) for k, f in step_fns.items()}
    segments["advance_eval"] = adv.evaluate
    if peak_size:
        segments["peak"], peak_flop = square_product(peak_size, case.precision)
        segments["peak"]()  # warm-up: OpenBLAS's threads and buffers
    cpu_start = _cpu_sample()
    usage = {}
    times = _interleaved(segments, repeats, usage)
    other = _other_cores(cpu_start, _cpu_sample())
    med = {k: statistics.median(v) for k, v in times.items()}
    flop = step_flops(static)
    out = {"case": dataclasses.asdict(case), "S": static.groups, "G": static.group_size,
           "formulation": "kernel" if static.kernel_step else "direct",
           "flop_per_run_step": flop, "compile_s": adv.compile_s, "eval_s": med["advance_eval"],
           "gram_s": adv.gram_s, "gram_bytes": tree_bytes(adv.gram),
           "other_cores": other,
           "peak_gflops": peak_flop / med["peak"] / 1e9 if peak_size else None,
           "impls": {}, "skipped": skipped}
    for k in runners:
        step_s = med[k] / steps[k]
        out["impls"][k] = {"steps": steps[k], "step_s": step_s,
                           "run_steps_per_s": case.runs / step_s,
                           "gflops": case.runs * flop / step_s / 1e9,
                           "spread": (min(times[k]) / med[k], max(times[k]) / med[k]),
                           **_system_load(usage[k], steps[k])}
    log(_case_line(out))
    return out


def _gram_traffic_lines(result: dict) -> list[str]:
    """The kernel formulation's rows against the machine's read bandwidth from memory: its
    step reads the Gram matrices once, so their bytes a step over its time is its traffic
    (from the last-level cache where a block of runs fits there, so it may pass 100 %)."""
    rows = [r for r in result["cases"] if r.get("gram_bytes")]
    if not rows or "bandwidth" not in result:
        return []
    bw = result["bandwidth"]
    lines = ["", "The kernel formulation's step is bound by reading its Gram matrices, once a "
             "step; on the CPU a block of runs takes a segment's steps together, so that they "
             "are read from the last-level cache where a block fits there. Read bandwidth from "
             f"memory (summing a {bw['start']['bytes'] / 2**30:g} GiB float32 "
             "array: " + "; ".join(
                 f"{when} " + ", ".join(f"{k[:-5]} {v:.1f}" for k, v in bw[when].items()
                                       if k.endswith("_gbps") and k != "best_gbps")
                 for when in ("start", "end"))
             + f" GB/s): **{bw['best_gbps']:.1f} GB/s**.", "",
             "| sizes | layout | R | Gram MB | Gram read GB/s | % of read bandwidth |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        c = r["case"]
        gbps = r["gram_bytes"] / r["impls"]["advance"]["step_s"] / 1e9
        lines.append(f"| {c['size']} | {c['layout']} | {c['runs']} "
                     f"| {r['gram_bytes'] / 1e6:,.0f} | {gbps:.1f} "
                     f"| {100 * gbps / bw['best_gbps']:.0f} % |")
    return lines


def _case_line(r: dict) -> str:
    c = r["case"]
    parts = [f"{c['size']} {c['layout']} R={c['runs']}"]
    for k, v in r["impls"].items():
        parts.append(f"{k} {_fmt(v['run_steps_per_s'])} run-steps/s ({v['gflops']:.1f} GFLOP/s)")
    if r.get("peak_gflops"):
        parts.append(f"square product beside it {r['peak_gflops']:.1f} GFLOP/s")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Memory: a fresh process per configuration.


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: Calls of ``advance`` in the memory profile (on the CPU of ``benchmarks/RESULTS.md`` the
#: resident set stopped growing after two or three).
ADVANCE_CALLS = 4


def _device_bytes(key: str) -> int:
    """A counter of the accelerator's allocator (``bytes_in_use``, ``peak_bytes_in_use``)."""
    return int(_jax().devices()[0].memory_stats()[key])


def _memory_child(spec: str) -> None:
    """Runs in a subprocess: compiles, then allocates and steps one case; prints JSON.

    On the CPU, peaks of the resident set (VmHWM, reset with ``clear_refs`` between phases);
    on an accelerator, of the device memory in use (``peak_bytes_in_use``, which cannot be
    reset: each phase's peak is the peak since the process started). ``setup_peak``
    (make_groups and init_state), ``steps_peak`` (2 steps without evaluation), ``eval_peak``
    (train.evaluate), ``advance_peak`` (``ADVANCE_CALLS`` calls of advance, 2 steps and the
    evaluation each, as the engine calls it segment after segment: glibc's malloc holds on to
    freed temporaries, so the resident set grows over the first calls). The kernel
    formulation's Gram matrices are built in the setup phase and held throughout, as the
    engine holds them. ``temp_bytes``: the temporaries XLA assigns to one call of
    ``advance`` (its buffer assignment, the same on every run; None where the backend does
    not say).
    """
    jax = _jax()
    import jax.numpy as jnp

    from jaxprune import train

    case = Case(**json.loads(spec))
    static = case_static(case)
    params, seeds = case_inputs(static)
    groups_abs = jax.eval_shape(lambda s: train.make_groups(s, static), seeds)
    state_abs = jax.eval_shape(lambda p, g: train.init_state(p, g, static), params, groups_abs)
    make = train.make_groups.lower(seeds, static=static).compile()
    init = train.init_state.lower(params, groups_abs, static=static).compile()
    two = jnp.int32(2)
    build = train.build_gram.lower(state_abs.mask, groups_abs, static=static).compile()
    gram_abs = train.build_gram.eval_shape(state_abs.mask, groups_abs, static=static)
    adv = train.advance.lower(state_abs, params, groups_abs, two, static=static,
                              gram=gram_abs).compile()
    steps = train.train_steps.lower(state_abs, params, groups_abs, two, static=static,
                                    gram=gram_abs).compile()
    evaluate = train.evaluate.lower(state_abs, params, groups_abs, static=static).compile()
    analysis = adv.memory_analysis()
    if accelerated():
        in_use, peak = (functools.partial(_device_bytes, k) for k in ("bytes_in_use",
                                                                       "peak_bytes_in_use"))
        reset = lambda: False  # noqa: E731
    else:
        in_use = lambda: _status_kib("VmRSS") * 1024  # noqa: E731
        peak = lambda: _status_kib("VmHWM") * 1024  # noqa: E731
        reset = _reset_peak
    baseline = in_use()
    resettable = reset()
    groups = make(seeds)
    state = init(params, groups)
    gram = build(state.mask, groups)
    jax.block_until_ready((groups, state, gram))
    peaks = {"setup_peak": peak()}
    reset()
    state = steps(state, params, groups, two, gram=gram)
    jax.block_until_ready(state)
    peaks["steps_peak"] = peak()
    reset()
    jax.block_until_ready(evaluate(state, params, groups))
    peaks["eval_peak"] = peak()
    reset()
    for _ in range(ADVANCE_CALLS):
        state, metrics = adv(state, params, groups, two, gram=gram)
        jax.block_until_ready((state, metrics))
    peaks["advance_peak"] = peak()
    print(json.dumps({
        "baseline": baseline, **peaks, "resettable": resettable,
        "state_bytes": tree_bytes(state), "data_bytes": tree_bytes(groups) + tree_bytes(params),
        "w_bytes": tree_bytes(state.net.w), "gram_bytes": tree_bytes(gram),
        "temp_bytes": None if analysis is None else analysis.temp_size_in_bytes}))


def memory_profile(case: Case, timeout: float = 900) -> dict:
    """Peak memory (resident on the CPU, in use on an accelerator) of a fresh process that
    steps ``case``, against its state and data.

    Ratios ``*_ratio`` = (peak RSS of a phase - RSS before allocating) / (state + data bytes),
    for the phases of ``_memory_child``; the programs are compiled before the baseline is
    taken, so compiler memory is excluded. ``gram_ratio``: the kernel formulation's Gram
    matrices, held for the whole chunk, over the same bytes (0 for the direct step);
    ``temp_ratio``: XLA's temporaries of ``advance`` over the same bytes. So
    ``1 + gram_ratio + temp_ratio`` is what a chunk needs at least, and ``advance_ratio``
    beyond it is what the allocator and the runtime's first executions add.
    """
    code = f"from jaxprune.bench import _memory_child; _memory_child({json.dumps(json.dumps(dataclasses.asdict(case)))})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())
    if proc.returncode != 0:
        return {"case": dataclasses.asdict(case), "error": proc.stderr.strip()[-500:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    total = out["state_bytes"] + out["data_bytes"]
    out["case"] = dataclasses.asdict(case)
    for phase in ("setup", "steps", "eval", "advance"):
        out[f"{phase}_ratio"] = (out[f"{phase}_peak"] - out["baseline"]) / total
    out["gram_ratio"] = out["gram_bytes"] / total
    out["temp_ratio"] = None if out["temp_bytes"] is None else out["temp_bytes"] / total
    return out


# ---------------------------------------------------------------------------------------------
# Compilations of a sweep over d.


def compile_count() -> dict:
    """Programs ``advance`` compiles for a sweep over 100 values of ``d``.

    Planned: distinct ``Static`` values of ``plan.plan_chunks`` for a sweep over d in
    [500, 2000] at n = 100, width = 50, 4 seeds, 5 fractions (nothing is compiled). Verified:
    a tiny sweep over 100 values of ``d`` run end to end by the engine, counting compilations
    of ``advance`` in JAX's compile log.
    """
    import logging
    import tempfile

    jax = _jax()
    from jaxprune import engine
    from jaxprune.config import sweep_from_dict
    from jaxprune.plan import default_memory_budget, plan_chunks

    d_values = np.linspace(500, 2000, 100).round().astype(int).tolist()
    sweep = sweep_from_dict({
        "name": "bench-d-sweep", "data": {"d": d_values, "n": 100, "n_test": 1000},
        "model": {"width": 50}, "prune": {"fraction": [0.0, 0.5, 0.8, 0.9, 0.95]},
        "sweep": {"seeds": 4}})
    chunks = plan_chunks(sweep.run_table(), default_memory_budget())
    statics = {c.static for c in chunks}
    out = {"d_values": len(set(d_values)), "runs": len(sweep.run_table()),
           "chunks": len(chunks), "planned_programs": len(statics),
           "padded_d": sorted({s.d for s in statics})}

    tiny_d = list(range(20, 120))
    tiny = sweep_from_dict({
        "name": "bench-d-tiny", "data": {"d": tiny_d, "n": 4, "n_test": 8},
        "model": {"width": 2}, "prune": {"fraction": [0.0, 0.5]},
        "train": {"steps": 4, "eval_every": 2, "checkpoint_every": 4}, "sweep": {"seeds": 1}})
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    old = logger.level, logger.propagate, jax.config.jax_log_compiles
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    jax.config.update("jax_log_compiles", True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            engine.run(tiny, Path(tmp) / "out", progress=False, log=lambda m: None)
    finally:
        jax.config.update("jax_log_compiles", old[2])
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]
    compiled = [m for m in messages if "Finished XLA compilation of jit(advance)" in m]
    tiny_chunks = plan_chunks(tiny.run_table(), default_memory_budget())
    out.update({"tiny_d_values": len(tiny_d),
                "tiny_planned_programs": len({c.static for c in tiny_chunks}),
                "tiny_advance_compilations": len(compiled)})
    return out


# ---------------------------------------------------------------------------------------------
# The whole benchmark.


def _machine() -> dict:
    jax = _jax()
    from jaxprune import cpu_update
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        mem = 0
    torch_version = None
    if importlib.util.find_spec("torch") is not None:
        from importlib import metadata

        torch_version = metadata.version("torch")  # without importing torch
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "commit": _commit(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "torch": torch_version,
            "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_products": cpu_update.status(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _commit() -> str | None:
    """The source checkout's commit, with ``+dirty`` when jaxprune/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "jaxprune"], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def default_cases(quick: bool, sizes=None, runs=None, layouts=None,
                  memory_cap_gb: float = 3.0, precision: str = "float32",
                  formulation: str = "auto") -> list[Case]:
    """The cases of a quick or full run; configurations whose state and data (of one
    implementation; each holds its own, plus temporaries) exceed ``memory_cap_gb`` are left
    out (at 3 GB: R = 4096 at d = 2000, and R seeds beyond 1024 or 256)."""
    sizes = sizes or (["paper-d1000"] if quick else list(SIZE_SETS))
    runs = runs or (QUICK_RUNS if quick else FULL_RUNS)
    layouts = layouts or LAYOUTS
    cases = []
    for size in sizes:
        d, n, width = SIZE_SETS[size]
        for layout in layouts:
            for R in runs:
                case = Case(size, d, n, width, R, layout, precision=precision,
                            formulation=formulation)
                if _case_bytes(case) <= memory_cap_gb * 1e9:
                    cases.append(case)
    return cases


def _case_bytes(case: Case) -> int:
    """A cheap estimate of state + data bytes: weights, mask, shared draws, samples."""
    w = 2 * case.width * case.d
    f = 4 if case.dtype == "float32" else 8
    state = case.runs * w * (f + 1)
    data = case.groups * ((case.n + case.n_test) * case.d * f + 2 * w * f)
    return state + data


def run(quick: bool = False, sizes=None, runs=None, layouts=None, impls=None,
        repeats: int | None = None, target_s: float | None = None,
        memory: bool = True, compiles: bool = True, torch_threads: int = 2,
        memory_cap_gb: float = 3.0, peak_sizes=None, memory_runs=None,
        precision: str = "float32", formulation: str = "auto", bandwidth_bytes: int = 1 << 30,
        log=print) -> dict:
    """Runs the benchmark and returns every measurement (JSON-serialisable).

    ``precision``: the step's and the peak's ``matmul_precision``; ``formulation``: plain
    GD's (``Case.formulation``). ``peak_sizes`` default to 1024-4096 on the CPU and
    2048-8192 on an accelerator (smaller products leave it idle); ``bandwidth_bytes``: the
    array ``read_bandwidth`` reads."""
    impls = impls or (QUICK_IMPLS if quick else IMPLS)
    if repeats is None:
        repeats = 3 if quick else 5
    if target_s is None:
        target_s = 0.15 if quick else 0.5
    result = {"machine": _machine(), "quick": quick, "load_start": _loadavg(),
              "settings": {"repeats": repeats, "target_s": target_s,
                           "torch_threads": torch_threads, "impls": list(impls),
                           "precision": precision, "formulation": formulation,
                           "settled": not accelerated()}}
    log(f"load average {result['load_start']}; measuring the matrix-product peak")
    if not peak_sizes:
        peak_sizes = (2048, 4096, 8192) if accelerated() else (1024, 2048, 3072, 4096)
        peak_sizes = peak_sizes[:2] if quick else peak_sizes
    peak = matmul_peak(peak_sizes, repeats=repeats, precision=precision)
    log(f"peak {peak['best_gflops']:.1f} GFLOP/s ({peak['per_size_gflops']})")
    bandwidth = read_bandwidth(bandwidth_bytes, repeats)
    log(f"read bandwidth {bandwidth['best_gbps']:.1f} GB/s")
    cases = default_cases(quick, sizes, runs, layouts, memory_cap_gb, precision, formulation)
    # The fastest size at the start is timed beside every case (``measure_case``).
    peak_size = fastest_size(peak)
    result["cases"] = []
    for case in cases:
        result["cases"].append(measure_case(case, impls, repeats, target_s,
                                            torch_threads=torch_threads, peak_size=peak_size,
                                            log=log))
    peak_end = matmul_peak(peak_sizes, repeats=repeats, precision=precision)
    log(f"peak at the end {peak_end['best_gflops']:.1f} GFLOP/s")
    result["peak"] = {"start": peak, "end": peak_end,
                      "best_gflops": max(peak["best_gflops"], peak_end["best_gflops"])}
    bandwidth_end = read_bandwidth(bandwidth_bytes, repeats)
    result["bandwidth"] = {"start": bandwidth, "end": bandwidth_end,
                           "best_gbps": max(bandwidth["best_gbps"], bandwidth_end["best_gbps"])}
    if memory:
        mem_runs = memory_runs or ((256,) if quick else (256, 1024, 4096))
        mem_cases = default_cases(quick, sizes, mem_runs, layouts, memory_cap_gb, precision,
                                  formulation)
        result["memory"] = []
        for case in mem_cases:
            m = memory_profile(case)
            result["memory"].append(m)
            if "error" in m:
                log(f"memory {case.size} {case.layout} R={case.runs}: error {m['error']}")
            else:
                log(f"memory {case.size} {case.layout} R={case.runs}: steps "
                    f"{m['steps_ratio']:.2f}x, advance {m['advance_ratio']:.2f}x state+data "
                    f"(XLA temporaries {_number_or_na(m['temp_ratio'])}x, rest {_rest_mb(m)} MB)")
    if compiles:
        result["compiles"] = compile_count()
        log(f"compiles: {result['compiles']}")
    result["load_end"] = _loadavg()
    result["settings"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    return result


# ---------------------------------------------------------------------------------------------
# Report.


def _fastest_torch(impls: dict) -> str | None:
    """The name of the fastest PyTorch form timed (``TORCH_FORMS``), or None."""
    return max((k for k in TORCH_FORMS if k in impls),
               key=lambda k: impls[k]["run_steps_per_s"], default=None)


def _system_cell(impl: dict) -> str:
    if "system_share" not in impl:  # results of a bench from before it measured them
        return "n/a"
    return f"{100 * impl['system_share']:.1f} % / {impl['minor_faults_per_step']:,.0f}"


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _rest_mb(row: dict) -> str:
    """MB of the advance phase's peak beyond state, data, Gram matrices and XLA's
    temporaries (``n/a`` for rows measured before ``temp_bytes`` was)."""
    if row.get("temp_bytes") is None:
        return "n/a"
    known = row["state_bytes"] + row["data_bytes"] + row["gram_bytes"] + row["temp_bytes"]
    return f"{(row['advance_peak'] - row['baseline'] - known) / 1e6:.1f}"


def _number_or_na(x) -> str:
    """``x`` to two decimals, or ``n/a`` where it was not measured (None)."""
    return "n/a" if x is None else f"{x:.2f}"


def _peak_sizes(peak: dict):
    """``(name, {size: GFLOP/s})`` of each product a peak measurement timed."""
    yield "jnp.dot", peak["per_size_gflops"]
    if "blas_per_size_gflops" in peak:  # not in results from before the native products
        yield "numpy", peak["blas_per_size_gflops"]


def _beside(r: dict, adv: dict) -> str:
    """The "peak beside | % of it" cells of a row (n/a in results from before they existed)."""
    local = r.get("peak_gflops")
    return f"{local:.1f} | {100 * adv['gflops'] / local:.0f} %" if local else "n/a | n/a"


def _test_sizes(cases: list[dict]) -> str:
    """The test-set sizes of the cases, as a phrase."""
    sizes = sorted({r["case"]["n_test"] for r in cases})
    return " or ".join(map(str, sizes))


def format_markdown(result: dict) -> str:
    """The measurements as markdown tables (paste into ``benchmarks/RESULTS.md``)."""
    m = result["machine"]
    peak = result["peak"]["best_gflops"]
    on_cpu = m["backend"] == "cpu"
    settled = (", each from a settled process (no thread of it spinning)"
               if result["settings"].get("settled") else "")
    precision = result["settings"].get("precision", "float32")
    device = "" if on_cpu else f"{m.get('device_kind', m['devices'][0])} beside "
    products = "XLA's jnp.dot and numpy's BLAS" if on_cpu else "XLA's jnp.dot"
    lines = [
        f"Machine: {device}{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; jax {m['jax']} "
        f"({m['backend']}), torch {m['torch'] or 'not installed'}, Python {m['python']}; "
        f"{m['date']}. XLA_FLAGS={m.get('xla_flags', '')!r}. jaxprune commit "
        f"{m.get('commit') or 'unknown'}.",
        f"Load average (1 min): {_number_or_na(result['load_start'])} at the start, "
        f"{_number_or_na(result['load_end'])} at the end ({m['cores']} cores; "
        + (f"above about {m['cores'] / 4:g} other processes were competing for them and every "
           "number below is depressed and noisy)." if on_cpu else
           "the host's: the timed work runs on the device)."),
        f"Matrix products at precision {precision}. Peak (best of square products by "
        f"{products}, measured at the start and the end): **{peak:.1f} GFLOP/s** ("
        + "; ".join(f"{when} {name} " + ", ".join(f"{k}: {v:.0f}" for k, v in sizes.items())
                    for when in ("start", "end")
                    for name, sizes in _peak_sizes(result["peak"][when]))
        + ").",
        (f"The step's CPU products: {m.get('cpu_products', 'XLA (before cpu_update existed)')}."
         if on_cpu else "The step's products: XLA's, on the device."),
        "others' CPU: cores other processes kept busy while a row was timed (from /proc/stat "
        "less this process's CPU time; 0 = a quiet machine).",
        f"peak beside: {'numpy' if on_cpu else 'XLA'}'s square product of the size fastest "
        "at the start, timed in the same rotation as the row's implementations; \"% of it\" "
        "is the row's share of the machine as it ran while the row was timed, \"% of peak\" "
        "its share of the pass's best.",
        f"Medians of {result['settings']['repeats']} interleaved repeats{settled}; torch "
        f"threads {result['settings']['torch_threads']} (OMP_WAIT_POLICY="
        f"{result['settings'].get('omp_wait_policy')}). FLOP per run-step = 8 m n d "
        "(the forward and gradient products with the noise patches, padded sizes). Rows of "
        "the kernel formulation (column \"step\") do fewer FLOPs: their GFLOP/s is this "
        "formula's work per second (equivalent throughput) and can exceed the peak; "
        "building their Gram matrices (column \"Gram s\", once per chunk) is left out of "
        "their run-steps/s and ratios. eval s: one evaluation of the row's R runs on "
        f"{_test_sizes(result['cases'])} test examples. advance sys %: the share of this "
        "process's CPU time in the kernel while advance's steps were timed, and its minor page "
        "faults a step (fresh memory touched: both near 0 when the step reuses its buffers).",
        "",
        "| sizes (d, n, m) | layout | R | S x G | step | advance run-steps/s | GFLOP/s | % of peak "
        "| peak beside | % of it "
        "| loop run-steps/s | torch run-steps/s (form) | advance / torch | advance / loop "
        "| compile s | eval s | Gram s | others' CPU | advance sys % / faults a step |",
        "|---|---|---:|---|---|" + "---:|" * 14,
    ]
    for r in result["cases"]:
        c, im = r["case"], r["impls"]
        adv = im["advance"]
        loop, fastest = im.get("loop"), _fastest_torch(im)
        tor = im.get(fastest)
        cell = lambda v: _fmt(v["run_steps_per_s"]) if v else "n/a"  # noqa: E731
        form = ((" (compiled)" if TORCH_FORMS[fastest] else " (bmm)")
                if sum(k in im for k in TORCH_FORMS) > 1 else "")
        ratio = lambda v: f"{adv['run_steps_per_s'] / v['run_steps_per_s']:.2f}" if v else "n/a"  # noqa: E731
        lines.append(
            f"| {c['size']} ({c['d']}, {c['n']}, {c['width']}) | {c['layout']} | {c['runs']} "
            f"| {r['S']} x {r['G']} | {r.get('formulation', 'direct')} "
            f"| {_fmt(adv['run_steps_per_s'])} | {_fmt(adv['gflops'])} "
            f"| {100 * adv['gflops'] / peak:.0f} % | {_beside(r, adv)} "
            f"| {cell(loop)} | {cell(tor)}{form} | {ratio(tor)} "
            f"| {ratio(loop)} | {r['compile_s']:.2f} | {r['eval_s']:.3f} "
            f"| {'-' if r.get('gram_s') is None else format(r['gram_s'], '.3f')} "
            f"| {_number_or_na(r.get('other_cores'))} | {_system_cell(adv)} |")
    skipped = {}  # reason -> what it left out
    for r in result["cases"]:
        for name, why in r["skipped"].items():
            skipped.setdefault(why, set()).add(name)
    for why, names in sorted(skipped.items()):
        lines.append(f"\n{', '.join(sorted(names))}: {why}")
    lines += _gram_traffic_lines(result)
    if result.get("memory"):
        memory = "RSS" if on_cpu else "device memory in use"
        lines += ["", f"Peak {memory} of a fresh process per row, over its {memory} before "
                  "allocating (programs compiled first), divided by state + data bytes. *Rest*: "
                  "MB of the advance phase's peak beyond the state, data, Gram matrices and "
                  "XLA's temporaries (the runtime's first executions, memory the allocator "
                  "keeps):", "",
                  f"| sizes | layout | R | state MB | data MB | baseline {memory} MB "
                  f"| steps only | evaluate | advance, {ADVANCE_CALLS} calls | setup "
                  "| of which Gram | XLA temporaries of advance | rest MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for mrow in result["memory"]:
            c = mrow["case"]
            if "error" in mrow:
                lines.append(f"| {c['size']} | {c['layout']} | {c['runs']} | error: "
                             f"{mrow['error'][-80:]} |" + " |" * 9)  # 13 columns
                continue
            mb = lambda b: f"{b / 1e6:,.0f}"  # noqa: E731
            lines.append(
                f"| {c['size']} | {c['layout']} | {c['runs']} | {mb(mrow['state_bytes'])} "
                f"| {mb(mrow['data_bytes'])} | {mb(mrow['baseline'])} "
                f"| {mrow['steps_ratio']:.2f} | {mrow['eval_ratio']:.2f} "
                f"| {mrow['advance_ratio']:.2f} | {mrow['setup_ratio']:.2f} "
                f"| {mrow.get('gram_ratio', float('nan')):.2f} "
                f"| {_number_or_na(mrow.get('temp_ratio'))} "
                f"| {_rest_mb(mrow)} |")
    if result.get("compiles"):
        cc = result["compiles"]
        lines += ["", f"Sweep over {cc['d_values']} values of d ({cc['runs']} runs, n = 100, "
                  f"width = 50): {cc['chunks']} chunks, **{cc['planned_programs']} programs** "
                  f"(padded d = {cc['padded_d']})."]
        if "tiny_advance_compilations" in cc:
            lines.append(
                f"Verified end to end on a tiny sweep over {cc['tiny_d_values']} values of d: "
                f"the plan has {cc['tiny_planned_programs']} programs and JAX's compile log "
                f"shows {cc['tiny_advance_compilations']} compilations of advance.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.


def script_args(usage: str, valid) -> list[str]:
    """The command-line arguments of a script in ``benchmarks/``: prints ``usage`` and exits
    with status 0 on ``-h`` or ``--help``, with status 2 where ``valid(args)`` is false."""
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(usage)
        sys.exit(0)
    if not valid(args):
        print(usage, file=sys.stderr)
        sys.exit(2)
    return args


def positive_ints(args) -> bool:
    """Whether every one of ``args`` is a positive integer (``script_args``' checks)."""
    return all(a.isdigit() and int(a) > 0 for a in args)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _output_file(text: str) -> str:
    """A file that can be written: checked before measuring, not after a long pass."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jaxprune bench``."""
    from jaxprune.cli import _positive_int
    from jaxprune.config import FIELDS
    from jaxprune.spec import FORMULATIONS

    parser.add_argument("--quick", action="store_true",
                        help="a short run (1-2 minutes): paper sizes d=1000, R in {16, 256}")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZE_SETS), metavar="SIZES",
                        help="size sets to measure: " + ", ".join(
                            f"{k} (d, n, width = {v})" for k, v in SIZE_SETS.items()))
    parser.add_argument("--runs", nargs="+", type=_positive_int, metavar="R",
                        help="numbers of runs R (default 16 64 256 1024 4096; quick 16 256)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS,
                        help="shared: R runs of one seed (S=1, G=R); seeds: R seeds, one run "
                             "each (S=R, G=1); default both")
    parser.add_argument("--impls", nargs="+", choices=IMPLS,
                        help="implementations to time (advance is always timed; default all, "
                             "quick all but torch-compiled): loop, one jitted step per run; "
                             "torch, benchmarks/torch_step.py's batched step; torch-compiled, "
                             "that step under torch.compile")
    parser.add_argument("--repeats", type=_positive_int, help="timed repeats per case (median)")
    parser.add_argument("--target-seconds", type=_positive_float,
                        help="length of one timed segment per implementation")
    parser.add_argument("--torch-threads", type=_positive_int, default=2,
                        help="torch.set_num_threads (default 2)")
    parser.add_argument("--memory-cap-gb", type=_positive_float, default=3.0,
                        help="leave out cases whose state and data exceed this many GB "
                             "(default 3: every implementation holds its own copy)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory profile")
    parser.add_argument("--memory-runs", nargs="+", type=_positive_int, metavar="R",
                        help="numbers of runs R of the memory profile (default 256 1024 4096; "
                             "quick 256)")
    parser.add_argument("--matmul-precision", choices=FIELDS["matmul_precision"].choices,
                        default=FIELDS["matmul_precision"].default,
                        help="precision of the step's and the peak's float32 products "
                             "(the sweep option matmul_precision; tensorfloat32 matters on "
                             "NVIDIA GPUs only)")
    parser.add_argument("--formulation", choices=FORMULATIONS, default="auto",
                        help="plain GD's formulation: auto (default), as a sweep runs it; "
                             "direct, the step whose FLOPs are counted (its share of the "
                             "peak); or kernel")
    parser.add_argument("--no-compiles", action="store_true",
                        help="skip counting the programs of a sweep over d")
    parser.add_argument("--xla-flags", metavar="FLAGS", default="",
                        help="appended to XLA_FLAGS before JAX starts, e.g. "
                             "'--xla_cpu_experimental_ynn_fusion_type=' (XLA:CPU without "
                             "YNNPACK fusions); must be the first JAX work of the process")
    parser.add_argument("--json", metavar="FILE", type=_output_file, help="also write every measurement here")
    parser.add_argument("--markdown", metavar="FILE", type=_output_file, help="also write the tables here")


def main(args: argparse.Namespace) -> int:
    """``jaxprune bench``: prints progress, then the markdown tables."""
    # Compile times and counts are of compiles: with JAX's persistent cache on (README,
    # *Compiling once*) they would be reads of it. Decided at the process's first compile.
    _jax().config.update("jax_enable_compilation_cache", False)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    impls = args.impls and tuple(dict.fromkeys(["advance", *args.impls]))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = run(quick=args.quick, sizes=args.sizes, runs=args.runs, layouts=args.layouts,
                 impls=impls, repeats=args.repeats, target_s=args.target_seconds,
                 memory=not args.no_memory, compiles=not args.no_compiles,
                 torch_threads=args.torch_threads, memory_cap_gb=args.memory_cap_gb,
                 memory_runs=args.memory_runs, precision=args.matmul_precision,
                 formulation=args.formulation, log=log)
    text = format_markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0
