"""Container records on disk, in `<data-root>/containers/<id>/`.

`record.json` is the whole record as the create made it, and it is never
written again. The create renames it into place and returns, and the file
is flushed to the disk right after, in the background. dockerd's atomic
file writer (moby's pkg/ioutils) flushes before the rename instead. Here a
power loss in the milliseconds between the rename and the flush can leave
the file empty, so the next start deletes a directory whose record is
empty. `state.json` contains what changes
later, the state and the runtime lock-in, and each change replaces it by a
rename without waiting for the disk. That keeps the disk off the path of a
start and an exit, and loses nothing that matters:

- When the daemon process dies, the kernel still holds every file it
  wrote, so the next daemon reads the last state and lock-in, and finds
  the binary that owns a container that is still running.
- A power loss ends every container too. The state file may then be older
  than the last change, or unreadable on some file systems, in which case
  the container is loaded as the create made it. The recovery at start
  settles either.

Records are loaded once at daemon start. A record that cannot be read is
skipped and logged, so one damaged file does not keep the daemon from
starting.

A removal first renames the container's directory to `.removing-<id>`, one
atomic step after which the record is gone, and then deletes the files.
Directories of that name left by a crash are deleted at the next start,
after their root filesystem is unmounted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from actors.atomic import replace_unsynced
from actors.host import remove_tree
from messages.errors import DockyardError, InvalidRequest
from messages.records import (
    ContainerRecord,
    record_from_json,
    record_to_json,
    state_from_json,
    state_to_json,
)

logger = logging.getLogger(__name__)

RECORD_FILE = "record.json"
STATE_FILE = "state.json"
LOG_FILE = "container.log"
REMOVING_PREFIX = ".removing-"


class ContainerStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, container_id: str) -> Path:
        return self.root / container_id

    def log_path(self, container_id: str) -> Path:
        return self.directory(container_id) / LOG_FILE

    async def create(self, record: ContainerRecord) -> None:
        """Make the container's directory and write its first record.

        The caller flushes it with `flush` afterwards.
        """
        directory = self.directory(record.id)

        def create() -> None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_unsynced(directory / RECORD_FILE, record_to_json(record))

        await trio.to_thread.run_sync(create)

    async def flush(self, container_id: str) -> None:
        """Flush the record that `create` wrote to the disk, and log a failure.

        A container removed meanwhile is skipped.
        """
        path = self.directory(container_id) / RECORD_FILE

        def flush() -> None:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

        try:
            await trio.to_thread.run_sync(flush)
        except FileNotFoundError:
            return
        except OSError as error:
            logger.error("flushing %s to the disk failed: %s", path, error)

    async def save(self, record: ContainerRecord) -> None:
        """Replace the state and lock-in of `record`, without waiting for the disk.

        The directory is not made again: once a removal has renamed it, a
        late write fails with FileNotFoundError instead of bringing the
        container back.
        """
        path = self.directory(record.id) / STATE_FILE
        content = state_to_json(record)
        await trio.to_thread.run_sync(replace_unsynced, path, content)

    def container_ids(self) -> set[str]:
        """Return the names of the container directories, loaded or not. Blocking."""
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return set()
        return {entry.name for entry in entries if not entry.name.startswith(".")}

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

    def load_all(
        self, unmount: Callable[[Path], None] = lambda directory: None
    ) -> list[ContainerRecord]:
        """Read every record; blocking, for daemon start.

        Each directory an interrupted removal left is passed to `unmount`,
        which unmounts its root filesystem, and then deleted. One whose
        unmount raises is kept, as deleting it would reach into the mount.
        """
        records: list[ContainerRecord] = []
        if not self.root.is_dir():
            return records
        for leftover in self.root.glob(f"{REMOVING_PREFIX}*"):
            logger.info("deleting %s, left by an interrupted removal", leftover)
            try:
                unmount(leftover)
                remove_tree(leftover)
            except (DockyardError, OSError) as error:
                logger.error("cannot delete %s: %s", leftover, error)
        for directory in sorted(self.root.iterdir()):
            path = directory / RECORD_FILE
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            if not path.exists():
                # A create that a crash cut short leaves its directory with
                # no record, or with only the temporary file of one.
                logger.warning(
                    "skipped %s: it has no %s, so no container is loaded from "
                    "it. Delete it if no container is expected there.",
                    directory,
                    RECORD_FILE,
                )
                continue
            try:
                content = path.read_bytes()
                if not content and _contains_only_its_record(directory):
                    _remove_lost_create(directory)
                    continue
                record = record_from_json(content, source=str(path))
            except (OSError, InvalidRequest) as error:
                logger.error("skipped container record %s: %s", path, error)
                continue
            records.append(_with_stored_state(record, path.parent / STATE_FILE))
        return records


def _contains_only_its_record(directory: Path) -> bool:
    """Return whether `directory` has nothing but its record and the
    temporary files of record writes.

    A create that a power loss cut short leaves no more. Anything else, a
    state file or a root filesystem, means the container was started, and
    it may still run, so its files are not deleted.
    """
    for entry in directory.iterdir():
        if entry.name != RECORD_FILE and not entry.name.startswith(f".{RECORD_FILE}."):
            return False
    return True


def _remove_lost_create(directory: Path) -> None:
    """Delete the directory of a create whose record never reached the disk."""
    logger.warning(
        "deleting %s: its %s is empty, as a power loss right after the "
        "create leaves it, so its container was never saved",
        directory,
        RECORD_FILE,
    )
    remove_tree(directory)


def _with_stored_state(record: ContainerRecord, path: Path) -> ContainerRecord:
    """Return `record` with the state and lock-in in `path`, if it has any."""
    try:
        stored = state_from_json(path.read_bytes(), source=str(path))
    except FileNotFoundError:
        return record
    except (OSError, InvalidRequest) as error:
        logger.warning(
            "%s: loading container %s in the state its create left, as after "
            "a power loss",
            error,
            record.id[:12],
        )
        return record
    return attrs.evolve(record, state=stored.state, lockin=stored.lockin)
