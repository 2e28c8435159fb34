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

__all__ = ["Static", "RunParams", "SWEPT", "SIZES", "STATIC_FIELDS", "static_from_row",
           "run_params_from_table"]

#: Float fields that are per-run arrays.
SWEPT = ("fraction", "learning_rate", "signal_norm", "noise_std", "label_flip", "init_std")
#: Integer sizes: per-run arrays, padded to the bucket's size.
SIZES = ("d", "n", "n_test", "width")
#: Fields that select a program (a sweep over one of these makes one bucket per value).
STATIC_FIELDS = ("signal_support", "noise_orthogonal", "activation_power", "output_scale",
                 "patch_pool", "bias", "init", "mask", "nested", "optimizer", "momentum",
                 "steps", "eval_every", "dtype", "matmul_precision")


#: How plain GD may be computed (``Static.formulation``; "auto" lets ``kernel_step`` choose).
FORMULATIONS = ("auto", "direct", "kernel")


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
    formulation: str = "auto"

    @property
    def runs(self) -> int:
        return self.groups * self.group_size

    @property
    def kernel_step(self) -> bool:
        """Whether plain GD runs in the kernel formulation (``train``): where ``n^2 <= 2 d``
        (its per-filter Gram matrices are at most twice the weights, or as large where the
        CPU keeps their upper triangles, and a step reads them instead of multiplying by d
        columns), the run is long enough to repay building them once (``steps >= n``; they
        cost about n / 3 direct steps, half that as triangles), and segments have at least 2
        steps (each starts with a product over W and rebuilds W). ``formulation`` = "direct"
        or "kernel" forces a choice."""
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation {self.formulation!r} is not one of {FORMULATIONS}")
        if self.optimizer != "gd" or self.formulation == "direct":
            return False
        return self.formulation == "kernel" or (
            self.n * self.n <= 2 * self.d and self.steps >= self.n and self.eval_every >= 2)

    @property
    def float_dtype(self):
        return np.dtype(self.dtype)


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
