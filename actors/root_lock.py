"""An exclusive lock on the data root and exec root of a running daemon.

A second daemon on the same roots would read the first one's running
containers as left behind by a crash and delete them. So a daemon takes
an flock on a file in each root before it reads anything there, and
holds it until it stops. The kernel drops the lock when the process
dies, so a crashed daemon never blocks the next start.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

from messages.errors import Conflict

LOCK_FILE = "dockyard.lock"
# Enough bytes for the pid line that the holder writes.
PID_LINE_BYTES = 32


class RootLock:
    """The locks of one daemon on its roots, held until `release`."""

    def __init__(self, descriptors: list[int]) -> None:
        self._descriptors = descriptors

    @classmethod
    def acquire(cls, roots: Sequence[Path]) -> RootLock:
        """Lock each root, which must exist. Blocking.

        Raises Conflict naming the root and the holder's pid when another
        process holds a lock; the locks taken so far are then released.
        A root given twice, or through a symlink, is locked once.
        """
        lock = cls([])
        try:
            for root in dict.fromkeys(os.path.realpath(root) for root in roots):
                lock._lock(Path(root) / LOCK_FILE)
        except BaseException:
            lock.release()
            raise
        return lock

    def _lock(self, path: Path) -> None:
        # Not inherited, so a runtime process that outlives the daemon
        # does not keep the lock.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._descriptors.append(descriptor)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"{path.parent} is in use by another Dockyard daemon"
                f"{_holder(descriptor)}, which holds the lock on {path}. Stop "
                "that daemon first, or give this one a data-root and an "
                "exec-root of its own."
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Release every lock. Closing the files releases their locks."""
        while self._descriptors:
            os.close(self._descriptors.pop())


def _holder(descriptor: int) -> str:
    """Return " (pid N)" from the holder's lock file, or nothing when unreadable."""
    try:
        text = os.pread(descriptor, PID_LINE_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""
