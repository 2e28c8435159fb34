"""Checkpoints of the chunk in flight, through orbax-checkpoint (the only module that uses it).

A checkpoint holds the batched ``TrainState``, the metrics recorded so far and a small JSON
record: the chunk, the step, the sweep's fingerprint, every array's dtype and shape, and a
SHA-256 of them all. Once orbax has finished a step, a SHA-256 of each of its files is written
next to them (``FILE_DIGESTS``). Restoring checks the files before orbax reads them (so a
truncated, garbled, missing or half-written file is refused cleanly), then the record and the
structure before orbax reads the arrays, then the arrays: a checkpoint is loaded whole or not
at all. The manager keeps the previous checkpoint to fall
back on; a checkpoint that fails is reported and deleted (the resumed chunk writes that step
again).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprune.results import write_json

__all__ = ["ChunkCheckpoints", "tree_digest", "file_digests", "saved_steps", "FILE_DIGESTS"]

#: The SHA-256 of every file of a step, in the step's folder; written last.
FILE_DIGESTS = "files.sha256.json"

_absl = logging.getLogger("absl")
_absl.setLevel(logging.WARNING)


def _flatten(tree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (but ``FILE_DIGESTS``), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != FILE_DIGESTS}


def tree_digest(tree) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every array of ``tree``."""
    h = hashlib.sha256()
    for name, leaf in sorted(_flatten(tree).items()):
        arr = np.asarray(leaf)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


class ChunkCheckpoints:
    """The checkpoints of one chunk, in ``directory``.

    Args:
      directory: where the steps go (one sub-folder per step).
      identity: JSON-able facts a checkpoint must match (chunk index, sweep fingerprint).
      warn: called with a message when a checkpoint is skipped.

    Attributes:
      discarded: steps found unusable (and deleted) by ``restore_latest``.
    """

    def __init__(self, directory: Path, identity: dict, warn: Callable[[str], None]):
        self.directory = Path(directory)
        self.identity = identity
        self.warn = warn
        self.discarded: list[int] = []
        self._manager = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            # The half-written steps of a killed process (orbax's own clean-up runs in a
            # thread, whose errors would arrive late and as log noise).
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=2, enable_async_checkpointing=False, create=True)
            self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)
        return self._manager

    def save(self, step: int, state, history: dict[str, np.ndarray]) -> None:
        """Saves ``state`` and ``history`` at ``step``, durably, before returning.

        Raises:
          OSError: the checkpoint could not be written (orbax's own errors included).
        """
        arrays = {"state": _flatten(state), "history": history}
        record = dict(self.identity, step=step, digest=tree_digest(arrays),
                      state_layout=_layout(arrays["state"]), history_layout=_layout(history))
        try:
            _remove_path(self.directory / str(step))  # a damaged leftover of this step, if any
            with _quiet_orbax():
                self.manager.save(step, args=ocp.args.Composite(
                    arrays=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)),
                    force=True)
                self.manager.wait_until_finished()
            folder = self.directory / str(step)
            write_json(folder / FILE_DIGESTS, file_digests(folder))
        except OSError:
            raise
        except Exception as e:  # TensorStore reports the OS error inside a ValueError
            code = re.search(r"os_error_code='(\d+)'", str(e))
            if code:
                code = int(code.group(1))
                raise OSError(code, os.strerror(code), str(self.directory / str(step))) from e
            raise OSError(f"checkpoint {self.directory / str(step)} could not be written "
                          f"({_reason(e)})") from e

    def restore_latest(self, abstract_state) -> tuple[Any, dict[str, np.ndarray], int] | None:
        """The newest checkpoint that passes every check, as ``(state, history, step)``.

        Checkpoints that fail are reported through ``warn`` and skipped; None if none passes.
        """
        if not self.directory.exists():
            return None
        try:
            with _quiet_orbax():
                steps = sorted(self.manager.all_steps(), reverse=True)
        except Exception as e:  # an unreadable directory is the same as no checkpoint
            self.warn(f"warning: checkpoints in {self.directory} are unreadable ({_reason(e)}); "
                      "running the chunk from the start")
            return None
        for step in steps:
            try:
                with _quiet_orbax():
                    return self._restore(step, abstract_state)
            except Exception as e:
                self.warn(f"warning: checkpoint {self.directory / str(step)} is unusable "
                          f"({_reason(e)}); deleted it, falling back to an older one")
                self.discarded.append(step)
                shutil.rmtree(self.directory / str(step), ignore_errors=True)
                with _quiet_orbax():  # it reads the other steps' metadata again
                    self.manager.reload()
        return None

    def _restore(self, step: int, abstract_state):
        folder = self.directory / str(step)
        try:
            saved = json.loads((folder / FILE_DIGESTS).read_text())
        except (OSError, ValueError):
            raise ValueError(f"no readable {FILE_DIGESTS} (a save cut short?)") from None
        found = file_digests(folder)
        changed = sorted(k for k in saved.keys() | found.keys() if saved.get(k) != found.get(k))
        if changed:
            raise ValueError(f"{len(changed)} file(s) missing, changed or added: "
                             + ", ".join(changed)[:120])
        record = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
        for key, value in self.identity.items():
            if record.get(key) != value:
                theirs = repr(record.get(key))
                raise ValueError(f"it belongs to another {key}"
                                 + (f" ({theirs})" if len(theirs) <= 40 else ""))
        if record.get("step") != step:
            raise ValueError("its record names another step")
        expected = _flatten(abstract_state)
        saved_layout, layout = record.get("state_layout"), _layout(expected)
        if saved_layout is None:
            raise ValueError("its record has no state layout (an older jaxprune wrote it)")
        if saved_layout.keys() != layout.keys():
            raise ValueError("its state has another structure")
        for k, want in layout.items():
            if saved_layout[k] != want:
                raise ValueError(f"state {k} is {_describe(saved_layout[k])}, expected "
                                 f"{_describe(want)}")
        target = {part: {k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
                         for k, (dtype, shape) in record[f"{part}_layout"].items()}
                  for part in ("state", "history")}
        arrays = self.manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(target))).arrays
        arrays = jax.tree.map(np.asarray, arrays)
        if tree_digest(arrays) != record.get("digest"):
            raise ValueError("its arrays do not match their recorded SHA-256")
        leaves = [arrays["state"][jax.tree_util.keystr(p)]
                  for p, _ in jax.tree_util.tree_flatten_with_path(abstract_state)[0]]
        state = jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)
        return state, arrays["history"], step

    def remove(self) -> None:
        """Deletes every checkpoint of the chunk (after its results are safely written)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _layout(arrays: dict[str, Any]) -> dict[str, list]:
    """``{name: [dtype, shape]}`` of arrays (or their shapes and dtypes), as the record keeps
    it (JSON)."""
    return {k: [np.dtype(v.dtype).str, list(v.shape)] for k, v in arrays.items()}


def _describe(layout: list) -> str:
    dtype, shape = layout
    return f"{np.dtype(dtype).name}{tuple(shape)}"


def _remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _reason(e: Exception) -> str:
    """An exception as one short line (orbax and TensorStore messages run long)."""
    text = str(e).split(" See full TensorStore details")[0].strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"


@contextlib.contextmanager
def _quiet_orbax():
    """Silences orbax's echoes of a failed read or write.

    When one array fails, orbax abandons the others; their errors surface as logged tracebacks
    of its threads and, at garbage collection, as long TensorStore dumps. The failure itself is
    reported once, by the caller.
    """
    hook, level = sys.unraisablehook, _absl.level
    sys.unraisablehook = lambda _: None
    _absl.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        time.sleep(0.1)  # the abandoned reads end in TensorStore's threads: let them end here
        gc.collect()
        raise
    finally:
        sys.unraisablehook = hook
        _absl.setLevel(level)


def saved_steps(directory: Path) -> list[int]:
    """Steps with a finished checkpoint in ``directory``: a step's folder holding its digests,
    written last (orbax's half-written folders are not named by a bare step number)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / FILE_DIGESTS).exists())
