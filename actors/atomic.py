"""Crash-safe file writes: a temporary file in the same directory, flushed,
then renamed over the target, so a reader gets the old content or the new,
never a part of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path, content: bytes, mode: int = 0o600, *, durable: bool = True
) -> None:
    """Replace `path` with `content`; blocking, so call it from a worker thread.

    The content is always flushed before the rename, so after a crash the
    file contains the old content or the new, never a part. With `durable`,
    the rename is on disk too when this returns; without it, a crash may
    still leave the old content.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.rename(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        _sync_directory(path.parent)


def replace_unsynced(path: Path, content: bytes) -> None:
    """Replace `path` with `content` by a rename, without waiting for the disk.

    Other processes, and this one after it crashed and restarted, read the
    old content or the new, never a part. After a power loss the file may
    hold older content, and on a file system that lets a rename reach the
    disk before the renamed file's data, it may be empty or cut short. ext4
    in its default data=ordered mode with auto_da_alloc writes the data of a
    file that replaces another by rename before it commits the rename (the
    kernel's ext4 documentation, "auto_da_alloc"). The file's mode is 0600.
    Blocking.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.rename(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
