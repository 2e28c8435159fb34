"""What a compiled program is specialised on (``Static``) and what it takes as data (``RunParams``).

Fields that set shapes or choose code paths are static and hashable: one program per bucket.
Every value swept across runs is an array with one entry per run, so new values never
recompile. Sizes (``d``, ``n``, ``n_test``, ``width``) are both: the program is built for
padded sizes and each run carries its own true size, padded with masks that make it exact.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from jaxprune import cpu_update
from jaxprune.config import FIELDS

__all__ = ["Static", "RunParams", "kernel_pays", "KERNEL_MIN_D_PER_N", "SWEPT", "SIZES",
           "STATIC_FIELDS", "static_from_row", "run_params_from_table"]

#: Float fields that are per-run arrays.
SWEPT = ("fraction", "learning_rate", "signal_norm", "noise_std", "label_flip", "init_std")
#: Integer sizes: per-run arrays, padded to the bucket's size.
SIZES = ("d", "n", "n_test", "width")
#: Fields that select a program (a sweep over one of these makes one bucket per value).
STATIC_FIELDS = ("signal_support", "noise_orthogonal", "activation_power", "output_scale",
                 "patch_pool", "bias", "init", "mask", "nested", "optimizer", "momentum",
                 "steps", "eval_every", "dtype", "matmul_precision", "formulation")


#: How plain GD may be computed (``Static.formulation``; "auto" lets ``kernel_step`` choose).
FORMULATIONS = FIELDS["formulation"].choices


@dataclasses.dataclass(frozen=True)
class Static:
    """The hashable description of one compiled program (a shape bucket).

    ``d``, ``n``, ``n_test`` and ``width`` are the padded sizes; ``groups`` (S) and
    ``group_size`` (G) lay the R = S * G runs of a chunk out as S data groups (one seed each)
    of G runs that share their training and test sets. ``formulation`` picks how plain GD is
    computed ("auto", "direct" or "kernel"; the numbers agree to rounding).
    ``matmul_precision`` is the precision of float32 matrix products ("float32" or
    "tensorfloat32", see ``train._static_precision``).
    """

    d: int
    n: int
    n_test: int
    width: int
    signal_support: int
    noise_orthogonal: bool
    activation_power: float
    output_scale: str
    patch_pool: str
    bias: bool
    init: str
    mask: str
    nested: bool
    optimizer: str
    momentum: float
    steps: int
    eval_every: int
    dtype: str
    # A default, so that a plan.json written before this field existed still loads.
    matmul_precision: str = "float32"
    groups: int = 1
    group_size: int = 1
    formulation: str = "auto"  # a default for plan.json files from before the field, too

    @property
    def runs(self) -> int:
        return self.groups * self.group_size

    @property
    def kernel_step(self) -> bool:
        """Whether plain GD runs in the kernel formulation (``train``): where ``kernel_pays``
        and segments have at least 2 steps (each starts with a product over W and rebuilds
        W). ``formulation`` = "direct" or "kernel" forces a choice."""
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation {self.formulation!r} is not one of {FORMULATIONS}")
        if self.optimizer != "gd" or self.formulation == "direct":
            return False
        return self.formulation == "kernel" or (self.eval_every >= 2 and kernel_pays(
            self.n, self.d, self.steps, cpu_update.gram_triangles(self.float_dtype)))

    @property
    def float_dtype(self):
        return np.dtype(self.dtype)


#: Where the CPU reads the Gram matrices as triangles, the kernel step pays from d = this
#: many times n. As one native call a segment, loss head included, it ran 1.08 / 1.31-1.48 /
#: 1.81-2.06x as many run-steps a second as the direct step at d / n = 1.5 / 2 / 3, the Gram
#: build repaid after 1,083 / 142-297 / 71-145 steps (``benchmarks/kernel_crossover.py``,
#: ``benchmarks/RESULTS.md``, 2026-12-06, 19:20 UTC). At d = 2 n it would be repaid only near
#: 3 n steps with one run per seed, for Gram matrices 25x the weights; before, it paid from 4
#: and, before that, from 6.
KERNEL_MIN_D_PER_N = 3


def kernel_pays(n: int, d: int, steps: int, triangles: bool) -> bool:
    """Whether the kernel formulation trains faster than the direct step. Its step reads the
    (n + 1) x (n + 1) Gram matrix of each filter (memory bound) where the direct one
    multiplies by d columns (4 n d FLOPs a filter), and building the Gram matrices once costs
    some direct steps. So: where they are at most twice the weights (``n^2 <= 2 d``) and
    ``steps >= n``; or, read as ``triangles`` by the CPU's native products, where
    ``d >= KERNEL_MIN_D_PER_N * n`` and ``steps >= 3 n`` (the build was repaid after 1-1.5 n
    steps at d / n = 3). Full matrices read by XLA (accelerators,
    CPUs without the native products) keep the first rule: on the CPU they ran 0.77-1.09x the
    direct step at d / n = 10."""
    return (n * n <= 2 * d and steps >= n) or (
        triangles and d >= KERNEL_MIN_D_PER_N * n and steps >= 3 * n)


class RunParams(NamedTuple):
    """Per-run values, each an array with a leading run axis R."""

    seed: jax.Array
    fraction: jax.Array
    learning_rate: jax.Array
    signal_norm: jax.Array
    noise_std: jax.Array
    label_flip: jax.Array
    init_std: jax.Array
    d: jax.Array
    n: jax.Array
    n_test: jax.Array
    width: jax.Array


def static_from_row(row: dict, sizes: dict, groups: int, group_size: int) -> Static:
    """The ``Static`` of a bucket, from one of its runs and its padded sizes."""
    fixed = {k: row[k] for k in STATIC_FIELDS}
    fixed["activation_power"] = float(fixed["activation_power"])
    fixed["momentum"] = float(fixed["momentum"])
    return Static(**sizes, **fixed, groups=groups, group_size=group_size)


def run_params_from_table(columns: dict[str, np.ndarray], dtype) -> RunParams:
    """Packs run-table columns (already ordered as the chunk's R runs) into ``RunParams``."""
    floats = {k: np.asarray(columns[k], dtype=dtype) for k in SWEPT}
    ints = {k: np.asarray(columns[k], dtype=np.int32) for k in SIZES}
    return RunParams(seed=np.asarray(columns["seed"], dtype=np.uint32), **floats, **ints)
