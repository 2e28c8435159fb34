"""Output files: durable writes, the results table, the metrics file, seed-mean summaries.

Every file is written to a temporary name, flushed to disk and renamed, so a reader (or a
resumed sweep) sees either the old file or the new one, never half of one. The files are
byte-for-byte deterministic: the same numbers always give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune.config import FIELDS, RunTable, as_python

__all__ = ["METRIC_COLUMNS", "SUMMARY_COLUMNS", "atomic_write", "write_npz", "read_npz",
           "write_json", "results_columns", "write_csv", "read_csv", "summarize", "cell_fields"]

#: Measurement columns of ``results.csv`` after the configuration fields and ``seed``.
METRIC_COLUMNS = (
    "train_loss", "train_error", "test_loss", "test_error", "signal_learning",
    "noise_memorization", "signal_filters", "diverged", "realized_fraction",
    "signal_learning_pos", "signal_learning_neg", "signal_filters_pos", "signal_filters_neg",
)

#: The columns ``summarize`` reads.
SUMMARY_COLUMNS = ("fraction", "seed", "test_error", "train_error", "diverged")


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file, fsync and rename.

    On failure (a full disk, say) ``path`` keeps its old content and the temporary file is
    removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load`` reads, with fixed timestamps so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    atomic_write(path, buf.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def results_columns(table: RunTable, run_ids: np.ndarray,
                    measured: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The results table: ``run``, every config field, ``seed``, then ``METRIC_COLUMNS``."""
    cols = {"run": np.asarray(run_ids)}
    cols.update({k: table.columns[k][run_ids] for k in list(FIELDS) + ["seed"]})
    cols.update({k: measured[k] for k in METRIC_COLUMNS})
    return cols


def _format(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        # Shortest text that reads back as the same number of its own precision.
        return str(v) if isinstance(v, np.floating) else repr(v)
    return str(v)


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """A CSV that ``pandas.read_csv`` reads as is; floats round-trip exactly."""
    names = list(columns)
    lines = [",".join(names)]
    for i in range(len(columns[names[0]])):
        lines.append(",".join(_format(columns[k][i]) for k in names))
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Reads a results CSV back into typed columns (without pandas).

    Raises:
      ValueError: the file is empty, or a row has another number of fields than the header.
    """
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise ValueError(f"{path} is empty")
    names = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise ValueError(f"{path}: line {number} has {len(row)} fields, the header "
                             f"{len(names)}")
    raw = list(zip(*rows)) or [()] * len(names)
    cols = {}
    for name, values in zip(names, raw):
        values = list(values)
        if all(v in ("true", "false") for v in values) and values:
            cols[name] = np.asarray([v == "true" for v in values])
            continue
        for cast in (int, float):
            try:
                cols[name] = np.asarray([cast(v) for v in values])
                break
            except ValueError:
                continue
        else:
            cols[name] = np.asarray(values, dtype=object)
    return cols


def cell_fields(columns: dict[str, np.ndarray]) -> list[str]:
    """Config fields that vary across the table, except ``fraction``: they define a cell."""
    return [k for k in FIELDS
            if k != "fraction" and k in columns and len(np.unique(columns[k])) > 1]


def summarize(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Seed means per (cell, fraction): test/train error with standard errors, over the runs
    that did not diverge (a diverged run's errors measure its overflow, not what it learned).

    Returns:
      One dict per (cell, fraction) with the cell's field values, ``fraction``, ``seeds`` (the
      runs in the means), ``test_error``, ``test_error_se``, ``train_error``,
      ``train_error_se`` (nan where fewer than two), ``diverged`` (the runs left out).
    """
    keys = cell_fields(columns) + ["fraction"]
    groups: dict[tuple, list[int]] = {}
    for i in range(len(columns["seed"])):
        groups.setdefault(tuple(as_python(columns[k][i]) for k in keys), []).append(i)
    rows = []
    for key, idx in sorted(groups.items()):
        row = dict(zip(keys, key))
        diverged = columns["diverged"][idx].astype(bool)
        kept = np.asarray(idx)[~diverged]
        row["seeds"] = len(kept)
        for metric in ("test_error", "train_error"):
            vals = columns[metric][kept].astype(np.float64)
            row[metric] = float(np.mean(vals)) if len(vals) else float("nan")
            row[metric + "_se"] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) \
                if len(vals) > 1 else float("nan")
        row["diverged"] = int(np.sum(diverged))
        rows.append(row)
    return rows
