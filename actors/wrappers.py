"""The wrapper store: content-addressed wrapper scripts under <data-root>/runtimes.

Rules it keeps:
- A wrapper's file name is `<runtime>.<sha256 of content>`, so installing
  the same content twice finds the existing file and writes nothing.
- A wrapper is written atomically and is never changed or removed while
  the daemon runs. `collect` removes unreferenced wrappers and is called
  only at daemon start, before any container can be started. The one
  exception is `discard`, which a failed reload uses for a file it wrote
  itself and never published, so no container can refer to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import trio

from actors.atomic import write_atomically
from messages.snapshot import ResolvedRuntime
from messages.wrapper import WRAPPER_MODE, parse_wrapper_file_name, wrapper_file_name

logger = logging.getLogger(__name__)


class WrapperStore:
    """Writes and collects wrapper scripts in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def install(self, runtime_name: str, content: bytes) -> tuple[str, bool]:
        """Make sure the wrapper exists; return its path and whether it was new."""
        path = self.directory / wrapper_file_name(runtime_name, content)
        created = await trio.to_thread.run_sync(self._install_sync, path, content)
        if created:
            logger.info("wrote wrapper %s for runtime %s", path, runtime_name)
        return str(path), created

    def _install_sync(self, path: Path, content: bytes) -> bool:
        if path.exists():
            return False
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, content, WRAPPER_MODE)
        return True

    async def begin_reload(self) -> None:
        """Called before a reload derives its runtimes; this store needs nothing."""

    def carry_over(self, runtime: ResolvedRuntime) -> ResolvedRuntime:
        """Keep an unchanged runtime from the previous snapshot: its file stays."""
        return runtime

    async def discard(self, path: str) -> None:
        """Remove a wrapper this daemon wrote but never published."""
        await trio.to_thread.run_sync(lambda: Path(path).unlink(missing_ok=True))
        logger.info("removed unpublished wrapper %s after a failed reload", path)

    def collect(self, referenced: Iterable[str]) -> list[str]:
        """Remove wrappers that no container record references; at start only."""
        keep = {os.path.abspath(path) for path in referenced}
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        for entry in sorted(self.directory.iterdir()):
            stray_temporary = entry.name.startswith(".")
            if not stray_temporary and parse_wrapper_file_name(entry.name) is None:
                continue
            if str(entry.absolute()) in keep:
                continue
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
            logger.info("removed unreferenced wrapper %s", entry)
        return removed
