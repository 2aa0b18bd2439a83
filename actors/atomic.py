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


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
