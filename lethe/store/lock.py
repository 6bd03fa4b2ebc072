"""The workspace writer lock: one writer at a time, readers never wait.

An OS file lock (``flock``) on ``<home>/lock``: the kernel releases it when the holder exits, even
on ``kill -9``, so a crashed writer never leaves the workspace locked. The file also says who holds
it (pid, command, since when), for the message a waiting writer prints. Readers do not take it:
every file a reader opens is written atomically (rename) or through SQLite transactions, so a
reader always sees a committed state.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lethe.errors import LetheError


class WorkspaceBusy(LetheError):
    """Another process holds the workspace's writer lock (raised with ``wait=False``)."""


class WorkspaceLock:
    """An exclusive, re-entrant (within one object) writer lock on one workspace."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0

    def holder(self) -> str:
        """Who holds (or last held) the lock, in words."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        if not info:
            return "another process"
        return f"pid {info.get('pid')} ({info.get('command', '?')}, since {info.get('since', '?')})"

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock; block (telling ``on_wait`` once) or raise :class:`WorkspaceBusy`."""
        if self._depth:
            self._depth += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._lock(fd, wait, on_wait)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._depth = fd, 1
        self._write_holder(fd)

    def _lock(self, fd: int, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        message = f"workspace {self.path.parent} is being changed by {self.holder()}"
        if not wait:
            raise WorkspaceBusy(f"{message}; try again when it has finished (or leave out --no-wait to wait)")
        if on_wait is not None:
            on_wait(f"{message}; waiting for it to finish ...")
        fcntl.flock(fd, fcntl.LOCK_EX)

    @staticmethod
    def _write_holder(fd: int) -> None:
        info = {"pid": os.getpid(), "command": " ".join(os.path.basename(a) for a in sys.argv[:2]),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Give the lock back (the outermost release unlocks)."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._depth > 0

    def held_elsewhere(self) -> bool:
        """Whether another process (or object) holds the lock right now (never blocks)."""
        if self.held or not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
