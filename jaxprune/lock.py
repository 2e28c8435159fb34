"""One writer per output directory: a lock file naming its owner's pid and host.

The lock is an ``flock`` on ``DIR/.lock``: the kernel releases it when its owner exits, however
it exits, so a lock file left by a killed process of this host is recognized as stale and taken
over, with no race between two processes taking it over at once. The file's text (pid, host,
time) names the owner in messages and in ``jaxprune status``. A lock file of another host is
not taken over (``flock`` may not reach across a network file system): the user removes it.
"""

from __future__ import annotations

import fcntl
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
        owner = json.loads((Path(directory) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, but belongs to another user
    return True


def lock_is_stale(owner: dict) -> bool:
    """A lock is stale when its owner ran on this host and is gone."""
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        pid = -1
    return owner.get("host") == socket.gethostname() and (pid <= 0 or not _alive(pid))


class DirectoryLock:
    """``with DirectoryLock(dir):`` holds the directory; a stale lock is taken over.

    Attributes:
      took_over: the previous owner's record when a stale lock was taken over, else None.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self.took_over: dict | None = None
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = read_lock(self.path.parent) or {}
                raise LockedError(
                    f"{self.path.parent} is in use by pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')} (since {owner.get('since', '?')}); wait for it "
                    "to finish, or use another --out directory") from None
            except BaseException:
                os.close(fd)
                raise
            # The owner before us may have removed the file between our open and flock.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            owner = read_lock(self.path.parent)  # left by a process that did not exit cleanly
            host = socket.gethostname()
            if owner and owner.get("host") != host:
                raise LockedError(
                    f"{self.path.parent} is locked by pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')} (since {owner.get('since', '?')}), which this host "
                    f"cannot check; if that run is gone, remove {self.path}")
            self.took_over = owner
            me = {"pid": os.getpid(), "host": host,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held, so no one locks a lost file
            os.close(self._fd)
            self._fd = None
