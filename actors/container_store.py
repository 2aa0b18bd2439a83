"""Container records on disk: `<data-root>/containers/<id>/record.json`.

Each record is written atomically, so after a crash a record is either the
one before the last write or the one after it. Records are loaded once at
daemon start; a record that cannot be read is skipped and logged, so one
damaged file does not keep the daemon from starting.

A removal first renames the container's directory to `.removing-<id>`, one
atomic step after which the record is gone, and then deletes the files.
Directories of that name left by a crash are deleted at the next start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from actors.atomic import write_atomically
from actors.host import remove_tree
from messages.errors import InvalidRequest
from messages.records import ContainerRecord, record_from_json, record_to_json

logger = logging.getLogger(__name__)

RECORD_FILE = "record.json"
LOG_FILE = "container.log"
REMOVING_PREFIX = ".removing-"


class ContainerStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, container_id: str) -> Path:
        return self.root / container_id

    def log_path(self, container_id: str) -> Path:
        return self.directory(container_id) / LOG_FILE

    async def save(self, record: ContainerRecord, *, durable: bool = True) -> None:
        """Replace the record atomically; `durable` also waits for the disk."""
        directory = self.directory(record.id)

        def save() -> None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(
                directory / RECORD_FILE, record_to_json(record), durable=durable
            )

        await trio.to_thread.run_sync(save)

    def discard(self, container_id: str) -> Path | None:
        """Take the record away at once; return the directory left to purge.

        One rename, so it runs on the caller's thread. Returns None when the
        directory is gone already, and raises any other OSError.
        """
        discarded = self.root / f"{REMOVING_PREFIX}{container_id}"
        try:
            os.rename(self.directory(container_id), discarded)
        except FileNotFoundError:
            return None
        return discarded

    async def purge(self, discarded: Path) -> None:
        """Delete a directory that `discard` returned, or another one that
        nothing uses any more, and log a failure."""
        try:
            await trio.to_thread.run_sync(remove_tree, discarded)
        except OSError as error:
            logger.error("cannot delete %s: %s", discarded, error)

    def load_all(self) -> list[ContainerRecord]:
        """Read every record; blocking, for daemon start."""
        records: list[ContainerRecord] = []
        if not self.root.is_dir():
            return records
        for leftover in self.root.glob(f"{REMOVING_PREFIX}*"):
            logger.info("deleting %s, left by an interrupted removal", leftover)
            try:
                remove_tree(leftover)
            except OSError as error:
                logger.error("cannot delete %s: %s", leftover, error)
        for path in sorted(self.root.glob(f"*/{RECORD_FILE}")):
            if path.parent.name.startswith("."):
                continue
            try:
                records.append(record_from_json(path.read_bytes(), source=str(path)))
            except (OSError, InvalidRequest) as error:
                logger.error("skipped container record %s: %s", path, error)
        return records
