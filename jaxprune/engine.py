"""Running a sweep: plan, run each chunk (resuming from checkpoints), write the results.

Output directory::

    sweep.toml         the resolved sweep; a resume must match it
    plan.json          the chunks (fixed at the first start, so a resume replays them)
    chunks/            one durable .npz per finished chunk: its final metrics and history
    checkpoints/       orbax checkpoints of the chunk in flight: at the first evaluation step
                       at or past each multiple of ``checkpoint_every``; none at a chunk's end,
                       where its chunk file is the durable record
    manifest.json      which chunks are done
    results.csv        one row per run (rewritten after every chunk)
    metrics.npz        every run's metrics at every evaluation step (long format)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxprune import results as res
from jaxprune import cpu_update, train
from jaxprune.checkpoint import ChunkCheckpoints, saved_steps
from jaxprune.config import ConfigError, RunTable, Sweep, load_sweep
from jaxprune.lock import DirectoryLock
from jaxprune.plan import (PAD, Chunk, chunk_from_json, chunk_to_json, default_memory_budget,
                           plan_chunks, size_text)
from jaxprune.spec import run_params_from_table

__all__ = ["run", "SweepMismatch", "OutputError", "OutOfMemory", "HISTORY_METRICS", "chunk_file",
           "checkpoint_dir", "chunk_done", "figure_file", "output_dir", "read_plan",
           "sweep_fingerprint"]

#: Metrics recorded at every evaluation step (columns of ``metrics.npz``).
HISTORY_METRICS = train.Metrics._fields


class SweepMismatch(ConfigError):
    """The output directory holds another sweep."""


class OutputError(RuntimeError):
    """The output directory cannot be written."""


class OutOfMemory(RuntimeError):
    """A chunk did not fit the device's memory."""


def sweep_fingerprint(sweep: Sweep) -> str:
    """A hash of the resolved sweep: its values, not the preset they came from (as
    ``Sweep.differences``), so that writing a preset's values out keeps the checkpoints."""
    resolved = dataclasses.replace(sweep, preset=None)
    return hashlib.sha256(resolved.to_toml().encode()).hexdigest()[:16]


def output_dir(sweep: Sweep, out: str | Path | None = None) -> Path:
    """``out``, by default ``runs/<name>``."""
    return Path(out) if out is not None else Path("runs") / sweep.name


def chunk_file(out: Path, index: int) -> Path:
    return Path(out) / "chunks" / f"chunk-{index:05d}.npz"


def checkpoint_dir(out: Path, index: int) -> Path:
    return Path(out) / "checkpoints" / f"chunk-{index:05d}"


def figure_file(out: Path) -> Path:
    """Where ``jaxprune run`` and ``plot`` draw the error curves."""
    return Path(out) / "figures" / "error_curves.png"


def run(sweep: Sweep | str | Path, out: str | Path | None = None, *, restart: bool = False,
        memory_budget: int | None = None, max_chunk_runs: int | None = None,
        progress: bool = True, log: Callable[[str], None] | None = None
        ) -> dict[str, np.ndarray]:
    """Runs (or resumes) a sweep and returns its results table.

    Args:
      sweep: a ``Sweep`` or the path of a sweep file.
      out: output directory (default ``runs/<name>``); resumed if it holds this sweep.
      restart: discard whatever the directory holds and start over.
      memory_budget: bytes one chunk may use (default: from the device).
      max_chunk_runs: at most this many runs per chunk.
        On a resume, either one given and other than the stored plan's re-plans the
        unfinished runs (their checkpoints are dropped; finished chunks are kept).
      progress: show a progress bar (else log a line per finished chunk).
      log: where notes go (default: standard error).

    Returns:
      The columns of ``results.csv``, one entry per run in sweep order.

    Raises:
      SweepMismatch: ``out`` holds a different sweep (and ``restart`` is False).
      LockedError: another process is writing to ``out``.
      OutputError: ``out`` cannot be written; finished chunks are kept.
      OutOfMemory: a chunk ran out of device memory; finished chunks are kept.
      PlanError: one run needs more than ``memory_budget``.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    out = output_dir(sweep, out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if "float64" in sweep.values["dtype"]:
        jax.config.update("jax_enable_x64", True)
    elif jax.default_backend() == "cpu" and not cpu_update.available():
        log(f"note: the CPU step runs XLA's own products, slower than its native ones "
            f"({cpu_update.status().removeprefix('XLA: ')}; README, *How it runs*)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with DirectoryLock(out) as lock:
            if lock.took_over:
                log(f"note: took over the stale lock of pid {lock.took_over.get('pid')} on "
                    f"{lock.took_over.get('host')}, which is gone")
            return _run_locked(sweep, out, restart, memory_budget, max_chunk_runs, progress,
                               log)
    except OSError as e:
        if out.is_file():
            raise OutputError(f"{out} is a file, not a directory; give another --out") from e
        advice = "fix the problem and run the same command to resume."
        advice = (f"Finished chunks are kept in {out / 'chunks'}; {advice}" if _has_chunks(out)
                  else advice.capitalize())
        raise OutputError(f"cannot write to {e.filename or out}: {e.strerror or e}. "
                          f"{advice}") from e


def _has_chunks(out: Path) -> bool:
    try:
        return any((out / "chunks").glob("chunk-*.npz"))
    except OSError:
        return False


def _run_locked(sweep, out, restart, memory_budget, max_chunk_runs, progress, log):
    if restart:
        for name in ("sweep.toml", "plan.json", "manifest.json", "results.csv", "metrics.npz"):
            (out / name).unlink(missing_ok=True)
        for name in ("chunks", "checkpoints"):
            shutil.rmtree(out / name, ignore_errors=True)
        figure_file(out).unlink(missing_ok=True)  # figures/ may hold the user's own files
        with contextlib.suppress(OSError):
            figure_file(out).parent.rmdir()
    _check_same_sweep(sweep, out, log)
    table = sweep.run_table()
    plan, chunks = _load_or_make_plan(sweep, table, out, memory_budget, max_chunk_runs, log)
    (out / "chunks").mkdir(exist_ok=True)

    done = {c.index for c in chunks if chunk_done(out, c, log)}
    for index in done:  # left behind when a process died right after writing the chunk file
        shutil.rmtree(checkpoint_dir(out, index), ignore_errors=True)
    if _options_changed(plan, memory_budget, max_chunk_runs) and len(done) < len(chunks):
        plan, chunks = _replan(sweep, table, out, chunks, done, plan, memory_budget,
                               max_chunk_runs, log)
    total = sum(len(c.run_ids) * c.static.steps for c in chunks)
    finished = sum(len(c.run_ids) * c.static.steps for c in chunks if c.index in done)
    if done:
        log(f"resuming {out}: {len(done)} of {len(chunks)} chunks already done")
    bar = tqdm(total=total, initial=finished, unit="run-step", unit_scale=True,
               disable=not progress, dynamic_ncols=True, desc=sweep.name, file=sys.stderr)
    runs_done = sum(len(c.run_ids) for c in chunks if c.index in done)

    def counts() -> str:
        return f"runs done {runs_done}/{len(table)}, chunks done {len(done)}/{len(chunks)}"

    try:
        for chunk in chunks:
            if chunk.index in done:
                continue
            bar.set_postfix_str(counts())
            start = time.perf_counter()
            _run_chunk_within_memory(sweep, table, chunk, out, bar, log, plan)
            done.add(chunk.index)
            runs_done += len(chunk.run_ids)
            bar.set_postfix_str(counts())
            if not progress:  # a line per chunk instead of the bar, for logs of long sweeps
                log(f"chunk {chunk.index} done in {time.perf_counter() - start:.1f} s: "
                    f"{counts()}")
            _write_manifest(out, chunks, done)
            _write_tables(table, out, sorted(done))
    finally:
        bar.close()
    _write_manifest(out, chunks, done)
    return _write_tables(table, out, sorted(done), with_metrics=True)


def _check_same_sweep(sweep: Sweep, out: Path, log) -> None:
    path = out / "sweep.toml"
    if not path.exists():
        if (out / "plan.json").exists() or (out / "chunks").exists():
            raise SweepMismatch(f"{out}: holds sweep output but no sweep.toml; use a new "
                                "directory, or --restart to discard it")
        res.atomic_write(path, sweep.to_toml().encode())
        return
    try:
        previous = load_sweep(path)
    except ConfigError as e:
        if _planned_fingerprint(out) == sweep_fingerprint(sweep):  # plan.json vouches for it
            log(f"note: {path} was unreadable ({e}); rewrote it from this sweep, which its "
                "plan.json was made for")
            res.atomic_write(path, sweep.to_toml().encode())
            return
        raise SweepMismatch(f"{out}: its sweep.toml is unreadable ({e}) and its plan.json is "
                            "not of this sweep; use a new directory, or --restart to discard "
                            "it") from None
    diff = sweep.differences(previous)
    if diff and not (out / "plan.json").exists() and not _has_chunks(out):
        # Left by a start that stopped before any work (a sweep that could not be planned).
        res.atomic_write(path, sweep.to_toml().encode())
        return
    if diff:
        details = "; ".join(f"{k}: {_values(previous, k)} there, {_values(sweep, k)} here"
                            for k in diff[:6])
        if len(diff) > 6:
            details += f"; and {', '.join(diff[6:])}"
        raise SweepMismatch(
            f"{out} holds a different sweep ({details}). Use a new --out directory, or "
            "--restart to discard what it holds.")


def _values(sweep: Sweep, key: str):
    if key == "seeds":
        return list(sweep.seeds)
    if key == "name":
        return sweep.name
    v = sweep.values[key]
    return v[0] if len(v) == 1 else list(v)


def read_plan(out: Path) -> tuple[dict, list[Chunk]] | None:
    """``out``'s ``plan.json`` (the chunks, and the sweep's fingerprint and the options they
    were made with) and its chunks; None before it is written.

    Raises:
      SweepMismatch: it is unreadable.
    """
    path = Path(out) / "plan.json"
    if not path.exists():
        return None
    try:
        plan = json.loads(path.read_text())
        return plan, [chunk_from_json(c) for c in plan["chunks"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SweepMismatch(f"{path} is unreadable ({type(e).__name__}: {e})") from None


def _planned_fingerprint(out: Path) -> str | None:
    try:
        stored = read_plan(out)
    except SweepMismatch:
        return None
    return stored and stored[0].get("fingerprint")


def _load_or_make_plan(sweep, table, out, memory_budget, max_chunk_runs, log
                       ) -> tuple[dict, list[Chunk]]:
    """The stored plan and its chunks (``read_plan``), or a new one for ``sweep`` (where none
    is stored or it is damaged: chunk files and checkpoints name their runs, so those of the
    new plan's chunks are kept and the others run again)."""
    try:
        stored = read_plan(out)
    except SweepMismatch as e:
        log(f"note: {e}; planned the sweep again (finished chunks of the same runs are kept)")
        stored = None
    if stored:
        return stored
    budget = memory_budget or default_memory_budget()
    chunks = plan_chunks(table, budget, max_chunk_runs)
    return _write_plan(out, sweep, chunks, budget, max_chunk_runs), chunks


def _write_plan(out, sweep, chunks, memory_budget, max_chunk_runs) -> dict:
    plan = {"fingerprint": sweep_fingerprint(sweep), "memory_budget": memory_budget,
            "chunk_runs": max_chunk_runs, "chunks": [chunk_to_json(c) for c in chunks]}
    res.write_json(out / "plan.json", plan)
    return plan


def _options_changed(plan: dict, memory_budget, max_chunk_runs) -> bool:
    return ((memory_budget is not None and memory_budget != plan["memory_budget"])
            or (max_chunk_runs is not None and max_chunk_runs != plan.get("chunk_runs")))


def _replan(sweep, table, out, chunks, done, plan, memory_budget, max_chunk_runs, log):
    """The finished chunks, then new chunks of the other runs for the options given (the
    chunks they replace and their checkpoints are dropped)."""
    kept = [c for c in chunks if c.index in done]
    dropped = [c for c in chunks if c.index not in done]
    budget = memory_budget or plan["memory_budget"]
    chunk_runs = max_chunk_runs or plan.get("chunk_runs")
    pending = np.sort(np.concatenate([c.run_ids for c in dropped]))
    new = plan_chunks(table, budget, chunk_runs, run_ids=pending,
                      first_index=max(c.index for c in chunks) + 1)
    for c in dropped:
        steps = saved_steps(checkpoint_dir(out, c.index))
        if steps:
            log(f"note: dropped the checkpoint of chunk {c.index} at step {steps[-1]}")
        shutil.rmtree(checkpoint_dir(out, c.index), ignore_errors=True)
        chunk_file(out, c.index).unlink(missing_ok=True)
    plan = _write_plan(out, sweep, kept + new, budget, chunk_runs)
    log(f"note: re-planned the {len(pending)} unfinished runs for a memory budget of "
        f"{size_text(budget)} and at most {chunk_runs or 'any number of'} runs a chunk: "
        f"{len(new)} chunks instead of {len(dropped)}")
    return plan, kept + new


def chunk_done(out: Path, chunk: Chunk, log) -> bool:
    """Whether ``chunk``'s file is written and holds its runs (``log`` hears why not)."""
    path = chunk_file(out, chunk.index)
    if not path.exists():
        return False
    try:
        data = res.read_npz(path)
        if np.array_equal(np.sort(data["run"]), np.sort(chunk.run_ids)):
            return True
        log(f"warning: {path} holds other runs than planned; that chunk runs again")
    except Exception as e:
        log(f"warning: {path} is unreadable ({e}); that chunk runs again")
    return False


def _write_manifest(out: Path, chunks: list[Chunk], done: set[int]) -> None:
    runs = sum(len(c.run_ids) for c in chunks)
    runs_done = sum(len(c.run_ids) for c in chunks if c.index in done)
    res.write_json(out / "manifest.json", {
        "chunks": len(chunks), "chunks_done": sorted(done), "runs": runs,
        "runs_done": runs_done})


# ---------------------------------------------------------------------------------------------
# One chunk.


def _chunk_inputs(table: RunTable, chunk: Chunk):
    """Run parameters ``(R,)`` and seeds ``(S,)`` of a chunk; empty slots copy a real run."""
    ids = chunk.runs.copy()
    for row in ids:
        real = row[row != PAD]
        row[row == PAD] = real[0] if len(real) else chunk.run_ids[0]
    columns = {k: v[ids.reshape(-1)] for k, v in table.columns.items()}
    params = run_params_from_table(columns, chunk.static.float_dtype)
    seeds = np.asarray(table.columns["seed"][ids[:, 0]], np.uint32)
    return jax.tree.map(jnp.asarray, params), jnp.asarray(seeds)


def _run_chunk_within_memory(sweep, table, chunk, out, bar, log, plan) -> None:
    """``_run_chunk``, with running out of device memory as ``OutOfMemory``."""
    try:
        _run_chunk(sweep, table, chunk, out, bar, log)
    except RuntimeError as e:  # XLA's errors are RuntimeErrors (jax.errors.JaxRuntimeError)
        if "RESOURCE_EXHAUSTED" not in str(e) and "Out of memory" not in str(e):
            raise
        first_line = str(e).strip().splitlines()[0]
        raise OutOfMemory(
            f"chunk {chunk.index} ran out of memory ({first_line[:200]}). Finished chunks are "
            f"kept; run the same command with a --memory-budget below this plan's "
            f"{size_text(plan['memory_budget'])} (or a smaller --chunk-runs) to re-plan the "
            "unfinished runs.") from None


def _run_chunk(sweep: Sweep, table: RunTable, chunk: Chunk, out: Path, bar, log) -> None:
    static = chunk.static
    params, seeds = _chunk_inputs(table, chunk)
    groups = train.make_groups(seeds, static)
    checkpoints = ChunkCheckpoints(
        checkpoint_dir(out, chunk.index),
        identity={"chunk": chunk.index, "sweep": sweep_fingerprint(sweep),
                  "runs": chunk.runs.tolist()}, warn=log)
    abstract = jax.eval_shape(lambda: train.init_state(params, groups, static))
    restored = checkpoints.restore_latest(abstract)
    if restored is None:
        if checkpoints.discarded:
            log(f"chunk {chunk.index}: no usable checkpoint left; running it from step 0")
        state = train.init_state(params, groups, static)
    else:
        state, history, step = restored
        state = jax.tree.map(jnp.asarray, state)
        log(f"chunk {chunk.index}: resumed from the checkpoint at step {step}")
    gram = train.build_gram(state.mask, groups, static)  # None unless the kernel formulation
    if restored is None:
        # The metrics at step 0 from `advance` of no steps, the program of every segment: with
        # `evaluate` a chunk compiled one more (0.6-0.9 s on the CPU at the sweeps' sizes).
        state, first = train.advance(state, params, groups, jnp.int32(0), static, gram)
        first = jax.device_get(first)
        history = {"step": np.zeros(1, np.int64),
                   **{k: np.asarray(v)[None] for k, v in first._asdict().items()}}
    real = len(chunk.run_ids)
    t = int(history["step"][-1])
    bar.update(real * t)
    while t < static.steps:
        stop = min((t // static.eval_every + 1) * static.eval_every, static.steps)
        state, metrics = train.advance(state, params, groups, jnp.int32(stop - t), static,
                                        gram)
        metrics = jax.device_get(metrics)
        history = {"step": np.append(history["step"], stop),
                   **{k: np.concatenate([history[k], np.asarray(v)[None]])
                      for k, v in metrics._asdict().items()}}
        bar.update(real * (stop - t))
        crossed = stop // sweep.values["checkpoint_every"][0] > t // sweep.values[
            "checkpoint_every"][0]
        t = stop
        if crossed and t < static.steps:
            checkpoints.save(t, state, history)
    _write_chunk(out, chunk, state, params, static, history)
    checkpoints.remove()
    n_div = int(np.sum(np.asarray(state.diverged).reshape(-1)[chunk.runs.reshape(-1) != PAD]))
    if n_div:
        log(f"warning: chunk {chunk.index}: {n_div} run(s) diverged (non-finite loss); they "
            "were frozen and are marked diverged in results.csv")


def _write_chunk(out, chunk, state, params, static, history) -> None:
    keep = chunk.runs.reshape(-1) != PAD
    stats = jax.device_get(train.mask_stats(state, params, static))
    final = {k: history[k][-1] for k in HISTORY_METRICS}
    measured = dict(final)
    measured["signal_learning"] = np.minimum(final["signal_learning_pos"],
                                             final["signal_learning_neg"])
    measured["signal_filters_pos"] = np.asarray(stats.signal_filters_pos)
    measured["signal_filters_neg"] = np.asarray(stats.signal_filters_neg)
    measured["signal_filters"] = np.minimum(stats.signal_filters_pos, stats.signal_filters_neg)
    measured["realized_fraction"] = np.asarray(stats.realized_fraction)
    measured["diverged"] = np.asarray(state.diverged)
    arrays = {"run": chunk.runs.reshape(-1)[keep], "step": history["step"]}
    arrays.update({k: np.asarray(v)[keep] for k, v in measured.items()})
    arrays.update({f"history.{k}": history[k][:, keep] for k in HISTORY_METRICS})
    res.write_npz(chunk_file(out, chunk.index), arrays)


# ---------------------------------------------------------------------------------------------
# Tables of the whole sweep.


def _write_tables(table: RunTable, out: Path, done: list[int], with_metrics: bool = False):
    parts = [res.read_npz(chunk_file(out, i)) for i in done]
    if not parts:
        return {}
    run_ids = np.concatenate([p["run"] for p in parts])
    order = np.argsort(run_ids, kind="stable")
    measured = {k: np.concatenate([p[k] for p in parts])[order] for k in res.METRIC_COLUMNS}
    columns = res.results_columns(table, run_ids[order], measured)
    res.write_csv(out / "results.csv", columns)
    if with_metrics:
        long = {"run": [], "step": [], **{k: [] for k in HISTORY_METRICS}}
        for p in parts:
            steps = p["step"]
            long["run"].append(np.repeat(p["run"], len(steps)))
            long["step"].append(np.tile(steps, len(p["run"])))
            for k in HISTORY_METRICS:
                long[k].append(p[f"history.{k}"].T.reshape(-1))
        long = {k: np.concatenate(v) for k, v in long.items()}
        order = np.lexsort((long["step"], long["run"]))
        res.write_npz(out / "metrics.npz", {k: v[order] for k, v in long.items()})
    return columns
