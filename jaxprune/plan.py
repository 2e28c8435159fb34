"""Planning: shape buckets, the seed-group layout of each chunk, chunks that fit memory.

Runs whose static fields agree share a program. Sizes (``d``, ``n``, ``n_test``, ``width``)
are padded to at most ``max_buckets`` values per axis, chosen to minimise the padded work, so
a sweep over 100 values of ``d`` compiles a handful of programs. Inside a bucket the runs of
one seed form rows of G runs (they share data); a chunk is S such rows.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable

import jax
import numpy as np

from jaxprune import cpu_update
from jaxprune.config import ConfigError, RunTable
from jaxprune.spec import SIZES, STATIC_FIELDS, Static, static_from_row

__all__ = ["Chunk", "PlanError", "plan_chunks", "padded_sizes", "default_memory_budget",
           "run_bytes", "group_bytes", "size_text", "chunk_to_json", "chunk_from_json"]

PAD = -1  # a run id that fills an empty slot of a chunk


class PlanError(ConfigError):
    """A run does not fit the memory budget of a chunk."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One jitted batch: S rows of G runs; the runs of a row share one seed.

    Attributes:
      index: position in the plan.
      static: the program's static description (``groups`` = S, ``group_size`` = G).
      runs: ``(S, G)`` run ids, ``PAD`` for an empty slot (computed, then discarded).
    """

    index: int
    static: Static
    runs: np.ndarray

    @property
    def run_ids(self) -> np.ndarray:
        """The real runs, in layout order."""
        flat = self.runs.reshape(-1)
        return flat[flat != PAD]


def padded_sizes(values: Iterable[int], max_buckets: int) -> dict[int, int]:
    """Maps each size to its bucket's size, with at most ``max_buckets`` buckets.

    Chooses contiguous groups of the sorted values minimising ``sum(count * bucket size)``,
    the padded work (dynamic programming over the sorted distinct values).
    """
    counts: dict[int, int] = {}
    for v in values:
        counts[int(v)] = counts.get(int(v), 0) + 1
    vals = sorted(counts)
    k, b = len(vals), min(max_buckets, len(vals))
    prefix = np.concatenate([[0], np.cumsum([counts[v] for v in vals])])
    inf = float("inf")
    # cost[j][i]: best cost of the first i values in j buckets; the last bucket ends at i-1.
    cost = [[inf] * (k + 1) for _ in range(b + 1)]
    cut = [[0] * (k + 1) for _ in range(b + 1)]
    cost[0][0] = 0.0
    for j in range(1, b + 1):
        for i in range(1, k + 1):
            for start in range(j - 1, i):
                c = cost[j - 1][start] + (prefix[i] - prefix[start]) * vals[i - 1]
                if c < cost[j][i]:
                    cost[j][i], cut[j][i] = c, start
    best_j = min(range(1, b + 1), key=lambda j: cost[j][k])
    mapping, i = {}, k
    for j in range(best_j, 0, -1):
        start = cut[j][i]
        for v in vals[start:i]:
            mapping[v] = vals[i - 1]
        i = start
    return mapping


def run_bytes(static: Static) -> int:
    """Device memory one run needs: weights, mask, optimizer slots, gradients, activations
    and the kernel formulation's Gram matrices."""
    f = static.float_dtype.itemsize
    weights = 2 * static.width * static.d
    slots = {"gd": 0, "momentum": 1, "adam": 2}[static.optimizer]
    # weights + gradient + updated weights + optimizer slots in floats, plus a bool mask.
    per_weight = (3 + 2 * slots) * f + 1
    samples = static.n + static.n_test
    return weights * per_weight + 2 * static.width * samples * f * 4 + _gram_bytes(static)


def _gram_bytes(static: Static) -> int:
    """A run's Gram matrices, of the noise with the support's indicator (``n + 1`` rows): none
    in the direct formulation; upper triangles where the CPU's native products read them, else
    full."""
    if not static.kernel_step:
        return 0
    k = static.n + 1
    per_filter = k * (k + 1) // 2 if cpu_update.gram_triangles(static.float_dtype) else k * k
    return 2 * static.width * per_filter * static.float_dtype.itemsize


def group_bytes(static: Static) -> int:
    """Device memory one seed's shared data needs: its examples (noise patches, labels, flip
    draws), initialization and mask draws, and the accelerator step's copy of the training
    noise with the support's indicator, ``(n + 1) x d`` (``train._support_noise``; the CPU's
    step makes none, so there this overestimates by that much)."""
    f = static.float_dtype.itemsize
    examples = (static.n + static.n_test) * (static.d + 2)
    draws = 4 * static.width * static.d + 2 * static.width
    return (examples + draws + (static.n + 1) * static.d) * f


def default_memory_budget() -> int:
    """Bytes a chunk may use: 60% of an accelerator's memory, or 40% of free host memory."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(0.6 * stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.4 * info.get("MemAvailable", info["MemTotal"]))
    except (OSError, KeyError, ValueError):
        return int(0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def plan_chunks(table: RunTable, memory_budget: int, max_runs: int | None = None,
                max_buckets: int = 4, run_ids: Iterable[int] | None = None,
                first_index: int = 0) -> list[Chunk]:
    """Splits the runs of ``table`` into chunks.

    Args:
      table: the runs.
      memory_budget: bytes one chunk may use.
      max_runs: at most this many runs per chunk (None: as many as fit).
      max_buckets: at most this many padded values per size axis.
      run_ids: plan only these runs (default: all).
      first_index: the first chunk's index.

    Raises:
      PlanError: one run and its seed's data need more than ``memory_budget``.
    """
    ids = list(range(len(table))) if run_ids is None else [int(i) for i in run_ids]
    pads = {k: padded_sizes(table.columns[k][ids], max_buckets) for k in SIZES}
    buckets: dict[tuple, list[int]] = {}
    for i in ids:
        row = table.row(i)
        key = tuple(row[k] for k in STATIC_FIELDS) + tuple(pads[k][row[k]] for k in SIZES)
        buckets.setdefault(key, []).append(i)

    chunks: list[Chunk] = []
    for bucket in buckets.values():
        first = table.row(bucket[0])
        sizes = {k: pads[k][first[k]] for k in SIZES}
        chunks += _bucket_chunks(table, bucket, first, sizes, memory_budget, max_runs,
                                 start=first_index + len(chunks))
    return chunks


def _bucket_chunks(table, run_ids, first, sizes, memory_budget, max_runs, start):
    by_seed: dict[int, list[int]] = {}
    for i in run_ids:
        by_seed.setdefault(int(table.columns["seed"][i]), []).append(i)

    # Rows: each seed's runs cut into pieces of at most G runs, G balanced to waste little
    # and small enough that one row fits the budget.
    one = static_from_row(first, sizes, groups=1, group_size=1)
    if run_bytes(one) + group_bytes(one) > memory_budget:
        shape = ", ".join(f"{k} = {sizes[k]}" for k in SIZES)
        raise PlanError(
            f"one run ({shape}) needs {size_text(run_bytes(one) + group_bytes(one))} with its "
            f"data, more than the memory budget of {size_text(memory_budget)} a chunk; give "
            "a larger --memory-budget if the machine has the memory, or smaller sizes")
    largest = max(len(v) for v in by_seed.values())
    limit = largest if max_runs is None else max(1, min(largest, max_runs))
    limit = min(limit, (memory_budget - group_bytes(one)) // run_bytes(one))
    group_size = max(math.ceil(len(v) / math.ceil(len(v) / limit)) for v in by_seed.values())
    rows = []
    for ids in by_seed.values():
        pieces = math.ceil(len(ids) / group_size)
        for piece in np.array_split(np.asarray(ids), pieces):
            rows.append(np.pad(piece, (0, group_size - len(piece)), constant_values=PAD))

    probe = static_from_row(first, sizes, groups=1, group_size=group_size)
    per_row = group_size * run_bytes(probe) + group_bytes(probe)
    rows_fit = max(1, memory_budget // per_row)
    if max_runs is not None:
        rows_fit = max(1, min(rows_fit, max_runs // group_size))
    n_chunks = math.ceil(len(rows) / rows_fit)
    groups = math.ceil(len(rows) / n_chunks)
    # Every chunk of a bucket has the same shape (one program): fill the last with empty rows.
    rows += [np.full(group_size, PAD)] * (n_chunks * groups - len(rows))
    static = static_from_row(first, sizes, groups=groups, group_size=group_size)
    return [Chunk(start + c, static, np.stack(rows[c * groups:(c + 1) * groups]))
            for c in range(n_chunks)]


def size_text(size: int) -> str:
    """``size`` bytes for people: ``"9.8 GB"``, ``"1.0 KB"``."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"


def chunk_to_json(chunk: Chunk) -> dict:
    return {"index": chunk.index, "static": dataclasses.asdict(chunk.static),
            "runs": chunk.runs.tolist()}


def chunk_from_json(obj: dict) -> Chunk:
    return Chunk(obj["index"], Static(**obj["static"]), np.asarray(obj["runs"], np.int64))
