"""One writer per output directory: a lock file naming its owner's pid and host."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

__all__ = ["DirectoryLock", "LockedError", "read_lock", "lock_is_stale"]

LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """Another live process writes to the directory."""


def read_lock(directory: Path) -> dict | None:
    """The lock's owner ``{"pid", "host", "since"}``, or None when unlocked."""
    try:
        return json.loads((Path(directory) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(owner: dict) -> bool:
    """A lock is stale when its owner ran on this host and is gone."""
    return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1)))


class DirectoryLock:
    """``with DirectoryLock(dir):`` holds the directory; a stale lock is taken over."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self.took_over: dict | None = None

    def __enter__(self) -> "DirectoryLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_lock(self.path.parent)
                if owner is None:  # being written right now, or garbage: look again
                    time.sleep(0.05)
                    owner = read_lock(self.path.parent) or {"host": socket.gethostname(),
                                                            "pid": -1}
                if owner.get("pid") == os.getpid() and owner.get("host") == me["host"]:
                    raise LockedError(f"{self.path.parent} is already held by this process")
                if not lock_is_stale(owner):
                    raise LockedError(
                        f"{self.path.parent} is in use by pid {owner.get('pid')} on "
                        f"{owner.get('host')} (since {owner.get('since')}); wait for it to "
                        f"finish, or remove {self.path} if that process is gone")
                self.took_over = owner
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise LockedError(f"could not take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        owner = read_lock(self.path.parent)
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
