"""Waiting for the pid files that a runtime writes into one directory.

A foreground `runc run` writes its `--pid-file` once the container's process
has started, and then keeps running until the container exits. The file is
the only sign that the start succeeded, so the daemon watches for it.

One inotify instance watches the directory for the whole life of the daemon,
and one task reads its events and wakes the start waiting for each name.
Closing an inotify instance waits for the kernel to drop its marks, which
takes milliseconds, so there is never one instance per container.

Rules it keeps:
- A start registers the name it waits for before the runtime is spawned, so
  an event cannot arrive before anyone waits for it.
- An event wakes a start but proves nothing: the start then reads the file
  itself. When the queue overflows, the directory is deleted or moved, or
  the watcher stops, every start is woken, and each checks its file and its
  runtime process. A directory that was deleted or moved is made again and
  watched anew.
- Files left in the directory by an earlier daemon process are stale, and
  they are removed when the watcher starts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import trio
from inotify_simple import INotify, flags

from messages.errors import RuntimeFailed

logger = logging.getLogger(__name__)

# A runtime may rename a finished file into place (runc does) or write it
# in place and close it, so both events count.
PID_FILE_EVENTS = flags.MOVED_TO | flags.CLOSE_WRITE
# The watched directory was deleted, moved or unmounted, so the watch no
# longer reports events for the path. The IN_IGNORED that follows needs nothing more.
WATCH_LOST = flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT
WATCHED_EVENTS = PID_FILE_EVENTS | flags.DELETE_SELF | flags.MOVE_SELF


class PidFileWatcher:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._inotify: INotify | None = None
        self._waiting: dict[str, trio.Event] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch the directory until cancelled; `started` once events can arrive.

        Raises RuntimeFailed when the directory cannot be made or watched.
        """
        with INotify(nonblocking=True) as inotify:
            self._watch(inotify)
            self._remove_stale_files()
            self._inotify = inotify
            logger.info("watching %s for runtime pid files", self.directory)
            task_status.started()
            try:
                while True:
                    await trio.lowlevel.wait_readable(inotify.fileno())
                    self._dispatch(inotify)
            finally:
                self._inotify = None
                self._wake_all()

    def _watch(self, inotify: INotify) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            inotify.add_watch(self.directory, WATCHED_EVENTS)
        except OSError as error:
            raise RuntimeFailed(
                f"cannot make or watch the pid file directory {self.directory}: "
                f"{error.strerror or error}. Remove whatever is at that path, or "
                "give the daemon another exec-root."
            ) from error

    def _remove_stale_files(self) -> None:
        try:
            stale = list(self.directory.iterdir())
        except OSError as error:
            logger.warning(
                "cannot list %s for stale pid files: %s", self.directory, error
            )
            return
        for path in stale:
            try:
                path.unlink()
            except OSError as error:
                logger.warning("cannot remove stale pid file %s: %s", path, error)

    @contextlib.contextmanager
    def expect(self, name: str) -> Iterator[trio.Event]:
        """Register `name`; the event is set when a file of that name appears."""
        if self._inotify is None:
            raise RuntimeError(
                f"the pid file watcher of {self.directory} is not running: "
                "start PidFileWatcher.run in a nursery first"
            )
        if name in self._waiting:
            raise RuntimeError(f"a start already waits for pid file {name}")
        event = self.renew(name)
        try:
            yield event
        finally:
            self._waiting.pop(name, None)

    def renew(self, name: str) -> trio.Event:
        """Return a new event for `name`, inside its `expect` block."""
        event = trio.Event()
        self._waiting[name] = event
        return event

    def _dispatch(self, inotify: INotify) -> None:
        for event in inotify.read(timeout=0):
            if event.mask & WATCH_LOST:
                self._rewatch(inotify)
                continue
            if event.mask & flags.Q_OVERFLOW:
                logger.warning(
                    "pid file events for %s overflowed; waking every start",
                    self.directory,
                )
                self._wake_all()
                continue
            waiter = self._waiting.pop(event.name, None)
            if waiter is not None:
                waiter.set()

    def _rewatch(self, inotify: INotify) -> None:
        """Make the directory again and watch it after it was deleted or moved."""
        logger.warning(
            "pid file directory %s was deleted or moved; making and watching it again",
            self.directory,
        )
        try:
            self._watch(inotify)
        except RuntimeFailed as error:
            # The starts in flight then fail, as runc cannot write there.
            logger.error("%s", error)
        self._wake_all()

    def _wake_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()
