"""Checkpoints of the chunk in flight, through orbax-checkpoint (the only module that uses it).

A checkpoint holds the batched ``TrainState``, the metrics recorded so far and a small JSON
record: the chunk, the step, the sweep's fingerprint and a SHA-256 of every array. Restoring
checks all of them, so a truncated, garbled or foreign checkpoint is refused whole, never
loaded in part; the manager keeps the previous checkpoint to fall back on.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["ChunkCheckpoints", "tree_digest", "saved_steps"]

logging.getLogger("absl").setLevel(logging.WARNING)


def _flatten(tree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


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
    """

    def __init__(self, directory: Path, identity: dict, warn: Callable[[str], None]):
        self.directory = Path(directory)
        self.identity = identity
        self.warn = warn
        self._manager = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=2, enable_async_checkpointing=False, create=True)
            self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)
        return self._manager

    def save(self, step: int, state, history: dict[str, np.ndarray]) -> None:
        """Saves ``state`` and ``history`` at ``step``, durably, before returning."""
        arrays = {"state": _flatten(state), "history": history}
        record = dict(self.identity, step=step, digest=tree_digest(arrays),
                      history_shapes={k: list(v.shape) for k, v in history.items()},
                      history_dtypes={k: np.asarray(v).dtype.str for k, v in history.items()})
        self.manager.save(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)),
            force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state) -> tuple[Any, dict[str, np.ndarray], int] | None:
        """The newest checkpoint that passes every check, as ``(state, history, step)``.

        Checkpoints that fail are reported through ``warn`` and skipped; None if none passes.
        """
        if not self.directory.exists():
            return None
        try:
            steps = sorted(self.manager.all_steps(), reverse=True)
        except Exception as e:  # an unreadable directory is the same as no checkpoint
            self.warn(f"checkpoints in {self.directory} are unreadable ({e}); restarting chunk")
            return None
        for step in steps:
            try:
                return self._restore(step, abstract_state)
            except Exception as e:
                self.warn(f"checkpoint {self.directory / str(step)} is unusable "
                          f"({type(e).__name__}: {str(e)[:200]}); falling back")
        return None

    def _restore(self, step: int, abstract_state):
        record = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
        for key, value in self.identity.items():
            if record.get(key) != value:
                raise ValueError(f"it belongs to another {key} ({record.get(key)!r})")
        if record.get("step") != step:
            raise ValueError("its record names another step")
        expected = _flatten(abstract_state)
        target = {
            "state": {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in expected.items()},
            "history": {k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(record["history_dtypes"][k]))
                        for k, shape in record["history_shapes"].items()},
        }
        arrays = self.manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(target))).arrays
        arrays = jax.tree.map(np.asarray, arrays)
        if set(arrays["state"]) != set(expected):
            raise ValueError("its state has another structure")
        for k, v in expected.items():
            got = arrays["state"][k]
            if got.shape != v.shape or got.dtype != v.dtype:
                raise ValueError(f"state {k} is {got.dtype}{got.shape}, expected "
                                 f"{v.dtype}{v.shape}")
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


def saved_steps(directory: Path) -> list[int]:
    """Steps with a finished checkpoint in ``directory`` (read from the folder names)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()
                  and not p.name.endswith(".tmp"))
