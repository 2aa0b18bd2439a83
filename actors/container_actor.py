"""The container actor: one per container, serialising its lifecycle.

Create, start, stop, kill and remove of one container run one at a time
in the actor's task; different containers proceed concurrently.

Rules it keeps:
- Start reads no configuration itself: it is handed the one snapshot its
  request read, resolves the runtime from it, runs the preflight check,
  and records the lock-in (runtime name, binary, generation, AppArmor
  profile) atomically before it calls the runtime.
- Every later runtime call (kill, state, delete, exec) goes through the
  binary in the record's lock-in, never through the current snapshot.
- A start that fails leaves nothing half-made: the runtime's container is
  deleted, the root filesystem unmounted and the lock-in cleared.
- Only the start waits for a record write, the lock-in's, before it calls
  the runtime. The other writes, the unmount after an exit and the
  deletion after a removal run in the background. Writes land in the
  order they were queued. A start waits for all of them first, and so
  does the deletion before it unmounts and deletes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from actors.actor import SerialActor
from actors.background import Background
from actors.container_store import ContainerStore
from actors.events import EventBus
from actors.host import Host, RunHandle, RuntimeClient, remove_tree, rootfs_path
from actors.output import OutputHub
from actors.rootfs_files import read_container_user
from messages import records
from messages.errors import Conflict, DockyardError, RuntimeFailed
from messages.execspec import DEFAULT_CAPABILITIES, select_apparmor_profile
from messages.oci import spec_to_json
from messages.records import ContainerRecord, ContainerState, RuntimeLockIn
from messages.requests import with_default_path
from messages.snapshot import Snapshot
from messages.spec import container_spec
from messages.stream import STDERR, STDOUT

logger = logging.getLogger(__name__)

# Docker's default time between the stop signal and SIGKILL, in seconds.
DEFAULT_STOP_TIMEOUT = 10
# How long a kill with SIGKILL may take before the container is reported stuck.
KILL_GRACE = 10

WAIT_NOT_RUNNING = "not-running"
WAIT_NEXT_EXIT = "next-exit"
WAIT_REMOVED = "removed"
WAIT_CONDITIONS = (WAIT_NOT_RUNNING, WAIT_NEXT_EXIT, WAIT_REMOVED)


@attrs.define(eq=False)
class _Run:
    """One run of the container, from runtime create to exit."""

    handle: RunHandle
    exited: trio.Event = attrs.Factory(trio.Event)
    exit_code: int | None = None
    # Whether the runtime deleted its container itself when it exited.
    runtime_deleted: bool = False


@attrs.define(eq=False)
class _Step:
    """A record write or an unmount that runs while the operations go on."""

    done: trio.Event = attrs.Factory(trio.Event)
    error: Exception | None = None


class ContainerActor:
    def __init__(
        self,
        record: ContainerRecord,
        *,
        host: Host,
        store: ContainerStore,
        events: EventBus,
        image_rootfs: Path,
        bundle_dir: Path,
        nursery: trio.Nursery,
        background: Background,
        on_removed: Callable[[str], None] = lambda container_id: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = record
        self._host = host
        self._store = store
        self._events = events
        self._image_rootfs = image_rootfs
        self._bundle_dir = bundle_dir
        self._nursery = nursery
        self._background = background
        self._clock = clock
        self._on_removed = on_removed
        self._actor = SerialActor(f"container {record.id[:12]}")
        self._run: _Run | None = None
        # Whether the runtime may still hold a container for this one: after
        # a start, until a delete through the lock-in has succeeded.
        self._runtime_container = record.lockin is not None
        # Whether this actor may have mounted the root filesystem and has
        # not unmounted it. The daemon's start-up recovery unmounts older ones.
        self._mounted = False
        # The last record write queued. Each write waits for the one before it.
        self._last_write: _Step | None = None
        # The unmount under way, if any.
        self._unmounting: _Step | None = None
        self._exit_changed = trio.Event()
        self.removed = trio.Event()
        self.output = OutputHub(store.log_path(record.id))

    @property
    def record(self) -> ContainerRecord:
        return self._record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def host(self) -> Host:
        return self._host

    @property
    def rootfs(self) -> Path:
        """The path of the container's root filesystem on the host while it runs."""
        return rootfs_path(self._store.directory(self.id))

    def locked_runtime(self) -> RuntimeClient:
        """Return the runtime client for the binary this container is locked in to."""
        if self._record.lockin is None:
            raise Conflict(f"container {self._record.name} has never been started")
        return self._host.runtime(self._record.lockin.binary)

    async def run(self) -> None:
        await self._actor.run()

    def close(self) -> None:
        self._actor.close()

    # The public operations; each runs in the actor's task.

    async def start(self, snapshot: Snapshot) -> bool:
        """Start the container with `snapshot`; False if it was already running."""
        return await self._actor.call(lambda: self._start(snapshot))

    async def stop(self, grace: float | None = None) -> bool:
        """Stop the container; False if it was not running.

        `grace` is the seconds between the stop signal and SIGKILL; None
        takes the container's stop timeout, or Docker's default.
        """
        return await self._actor.call(lambda: self._stop(grace))

    async def kill(self, signal: str) -> None:
        await self._actor.call(lambda: self._kill(signal))

    async def remove(self, force: bool) -> None:
        await self._actor.call(lambda: self._remove(force))

    async def shut_down(self, grace: float) -> None:
        """Stop the container for a daemon shutdown, then stop the actor."""
        try:
            await self._actor.call(lambda: self._stop_for_shutdown(grace))
        finally:
            self.close()

    async def wait(self, condition: str = WAIT_NOT_RUNNING) -> int:
        """Wait for `condition` and return the exit code of the last run."""
        if condition == WAIT_REMOVED:
            await self.removed.wait()
        elif condition == WAIT_NEXT_EXIT or self._record.running:
            changed = self._exit_changed
            await changed.wait()
        return self._record.state.exit_code

    # The operations themselves.

    async def _start(self, snapshot: Snapshot) -> bool:
        try:
            return await self._start_with(snapshot)
        except Exception:
            if self._record.config.auto_remove and not self._record.running:
                # As with dockerd: a container that should remove itself
                # when it ends also goes when it never starts, so that a
                # `docker run --rm` waiting for the removal returns.
                self._nursery.start_soon(self._auto_remove)
            raise

    async def _start_with(self, snapshot: Snapshot) -> bool:
        if self._record.running:
            return False
        if self._record.state.status == records.REMOVING:
            raise Conflict(f"container {self._record.name} is being removed")
        runtime = snapshot.runtime(self._record.config.runtime)
        wrapped = runtime.path if runtime.wrapper is not None else None
        self._host.preflight(runtime.name, runtime.binary, wrapped)
        config = self._record.config
        lockin = RuntimeLockIn(
            name=runtime.name,
            binary=runtime.binary,
            path=runtime.path,
            generation=snapshot.generation,
            apparmor_profile=select_apparmor_profile(
                config.apparmor_profile, config.privileged, self._host.apparmor_enabled
            ),
        )
        try:
            await self._create_and_start(lockin)
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await self._undo_start(error)
            raise
        logger.info(
            "started container %s (%s) with runtime %s through %s, generation %d",
            self.id[:12],
            self._record.name,
            lockin.name,
            lockin.binary,
            lockin.generation,
        )
        self._emit("start")
        return True

    async def _create_and_start(self, lockin: RuntimeLockIn) -> None:
        # The last run's exit write and unmount land first.
        await self._settle()
        # The lock-in is in place in the file system before the runtime is
        # first called, so a daemon that dies from here on can still find
        # the binary that owns the container. It is not synced to the disk,
        # as a power loss ends the container too. The write overlaps the
        # mount and the bundle, which do not need it.
        written = self._save_in_background(attrs.evolve(self._record, lockin=lockin))
        # Possibly mounted from here on, as an unmount of nothing does nothing.
        self._mounted = True
        await trio.to_thread.run_sync(self._prepare, lockin)
        await written.done.wait()
        if written.error is not None:
            raise written.error
        runtime = self._host.runtime(lockin.binary)
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            # One runtime process creates and starts it, waits for it and
            # deletes it. The lock-in above is already written, so nothing
            # needs the gaps between those steps.
            handle = await runtime.run(
                self.id, str(self._bundle_dir), stdout=stdout_write, stderr=stderr_write
            )
        except BaseException:
            os.close(stdout_read)
            os.close(stderr_read)
            raise
        finally:
            os.close(stdout_write)
            os.close(stderr_write)
        run = _Run(handle=handle)
        self._run = run
        self._nursery.start_soon(
            self.output.pump, {STDOUT: stdout_read, STDERR: stderr_read}
        )
        # Watched from here on, so that the runtime process of a start that
        # fails after this point is waited for too. Its reap is queued
        # behind this operation.
        self._nursery.start_soon(self._watch_exit, run)
        self._runtime_container = True
        state = ContainerState(
            status=records.RUNNING, pid=handle.pid, started_at=self._clock()
        )
        self._save_in_background(attrs.evolve(self._record, state=state))

    def _prepare(self, lockin: RuntimeLockIn) -> None:
        """Mount the root filesystem, read the account files, build the spec
        and write it: one worker thread call, as each call costs a thread
        hand-over. Blocking."""
        container_dir = self._store.directory(self.id)
        rootfs = self._host.mount_rootfs(self._image_rootfs, container_dir)
        config = self._record.config
        user = read_container_user(rootfs, config.user)
        env = with_default_path(config.env)
        if not any(entry.startswith("HOME=") for entry in env):
            env = (*env, f"HOME={user.home}")
        spec = container_spec(
            rootfs=str(rootfs),
            hostname=config.hostname or self.id[:12],
            args=config.args,
            env=env,
            cwd=config.working_dir or "/",
            user=user,
            privileged=config.privileged,
            apparmor_profile=lockin.apparmor_profile,
            capabilities=DEFAULT_CAPABILITIES,
            all_capabilities=self._host.privileged_capabilities,
        )
        self._bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self._bundle_dir / "config.json").write_bytes(spec_to_json(spec))

    async def _undo_start(self, error: BaseException) -> None:
        logger.error("start of container %s failed: %s", self.id[:12], error)
        self._run = None
        # runc may have made the container even when create reported failure.
        self._runtime_container = True
        await self._delete_runtime_container()
        self.output.end_attachments()
        await self._unmount()
        await trio.to_thread.run_sync(remove_tree, self._bundle_dir)
        message = str(error) if isinstance(error, DockyardError) else repr(error)
        state = attrs.evolve(self._record.state, status=records.CREATED, error=message)
        await self._quietly(
            self._save(attrs.evolve(self._record, state=state, lockin=None))
        )

    async def _watch_exit(self, run: _Run) -> None:
        try:
            ended = await run.handle.wait()
        except Exception as error:
            logger.error("lost track of container %s: %s", self.id[:12], error)
            code = -1
        else:
            code = ended.code
            run.runtime_deleted = ended.runtime_deleted
        run.exit_code = code
        run.exited.set()
        # A closed actor means a shutdown or a removal has reaped it already.
        with contextlib.suppress(trio.ClosedResourceError):
            await self._actor.call(lambda: self._reap(run))

    async def _reap(self, run: _Run) -> None:
        """Record the exit of `run` and release what it held; idempotent."""
        if self._run is not run:
            return
        self._run = None
        code = run.exit_code if run.exit_code is not None else -1
        if run.runtime_deleted:
            self._runtime_container = False
        else:
            await self._delete_runtime_container()
            # The init outlived its runtime process and is the daemon's child.
            self._nursery.start_soon(run.handle.reap_orphan)
        state = attrs.evolve(
            self._record.state,
            status=records.EXITED,
            pid=0,
            exit_code=code,
            finished_at=self._clock(),
        )
        # Neither the write nor the unmount holds up the exit: the next start
        # and the removal wait for them.
        self._save_in_background(attrs.evolve(self._record, state=state))
        self._unmount_in_background()
        logger.info("container %s exited with code %d", self.id[:12], code)
        self._emit("die", exitCode=str(code))
        changed, self._exit_changed = self._exit_changed, trio.Event()
        changed.set()
        if self._record.config.auto_remove:
            self._nursery.start_soon(self._auto_remove)

    async def _auto_remove(self) -> None:
        try:
            await self.remove(force=False)
        except (DockyardError, trio.ClosedResourceError) as error:
            logger.error("auto-remove of container %s failed: %s", self.id[:12], error)

    async def _stop_for_shutdown(self, grace: float) -> None:
        await self._stop(grace)
        # The daemon's nursery is cancelled next, which would drop the write
        # and the unmount.
        await self._settle()

    async def _stop(self, grace: float | None) -> bool:
        run = self._run
        if run is None:
            return False
        if grace is None:
            stop_timeout = self._record.config.stop_timeout
            grace = DEFAULT_STOP_TIMEOUT if stop_timeout is None else stop_timeout
        if grace < 0:
            # Docker's meaning of a negative timeout: never send SIGKILL.
            grace = math.inf
        runtime = self.locked_runtime()
        logger.info("stopping container %s (grace %ss)", self.id[:12], grace)
        await self._quietly(runtime.kill(self.id, self._record.config.stop_signal))
        with trio.move_on_after(grace):
            await run.exited.wait()
        if not run.exited.is_set():
            logger.info(
                "container %s did not stop in %ss: killing", self.id[:12], grace
            )
            await self._kill_and_wait(run, runtime)
        await self._reap(run)
        self._emit("stop")
        return True

    async def _kill_and_wait(self, run: _Run, runtime: RuntimeClient) -> None:
        await self._quietly(runtime.kill(self.id, "SIGKILL", all_processes=True))
        with trio.move_on_after(KILL_GRACE):
            await run.exited.wait()
        if not run.exited.is_set():
            runtime_pid = run.handle.runtime_pid
            raise RuntimeFailed(
                f"container {self._record.name} did not exit {KILL_GRACE}s after "
                f"SIGKILL through {runtime.binary}: its runtime process "
                f"{runtime_pid}, which reports the exit, has not exited. Check "
                f"whether that process is stopped (`ps -o pid,stat -p "
                f"{runtime_pid}`) and the container's state (`runc state`)."
            )

    async def _kill(self, signal: str) -> None:
        if self._run is None:
            raise Conflict(f"container {self._record.name} is not running")
        await self.locked_runtime().kill(self.id, signal)
        self._emit("kill", signal=signal)

    async def _remove(self, force: bool) -> None:
        run = self._run
        if run is not None and not force:
            raise Conflict(
                f"container {self._record.name} is running: stop it before "
                "removing it, or force the removal (docker rm -f)"
            )
        if run is not None:
            await self._kill_and_wait(run, self.locked_runtime())
            await self._reap(run)
        state = attrs.evolve(self._record.state, status=records.REMOVING)
        self._record = attrs.evolve(self._record, state=state)
        await self._delete_runtime_container()
        # The rename takes the record away at once, and the mount, if any,
        # moves with the directory. A write in flight then fails or lands in
        # the renamed directory, and the unmount in flight does its work or
        # finds nothing, so the purge unmounts at the new path.
        mounted = self._mounted or self._unmounting is not None
        discarded = self._store.discard(self.id)
        self._background.start_soon(lambda: self._purge(discarded, mounted))
        logger.info("removed container %s (%s)", self.id[:12], self._record.name)
        self._emit("destroy")
        self.output.end_attachments()
        self._on_removed(self.id)
        self.removed.set()
        self._exit_changed.set()
        self.close()

    async def _purge(self, discarded: Path | None, mounted: bool) -> None:
        """Delete a removed container's files once its steps in flight are done.

        The removal has returned by then: the record is gone, and the bundle
        is never used again, as container ids are unique. Shielded, so that
        a daemon shutting down finishes it.
        """
        with trio.CancelScope(shield=True):
            await self._settle()
            await trio.to_thread.run_sync(self._delete_files, discarded, mounted)

    def _delete_files(self, discarded: Path | None, mounted: bool) -> None:
        """Unmount and delete what `_purge` deletes. Blocking."""
        if discarded is not None:
            try:
                if mounted:
                    self._host.unmount_rootfs(discarded)
                remove_tree(discarded)
            except (DockyardError, OSError) as error:
                logger.error(
                    "cannot delete %s, the directory of removed container %s: "
                    "%s. Unmount %s if it is mounted, then delete the directory.",
                    discarded,
                    self.id[:12],
                    error,
                    rootfs_path(discarded),
                )
        try:
            remove_tree(self._bundle_dir)
        except OSError as error:
            logger.error("cannot delete bundle %s: %s", self._bundle_dir, error)

    def _unmount_in_background(self) -> None:
        """Unmount the root filesystem while the operations go on."""
        if not self._mounted or self._unmounting is not None:
            return
        step = _Step()
        self._unmounting = step
        container_dir = self._store.directory(self.id)

        async def unmount() -> None:
            # Shielded, as a start being undone in a daemon whose nursery is
            # cancelled waits for it, and the mount would be left otherwise.
            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        self._host.unmount_rootfs, container_dir
                    )
            except (DockyardError, OSError) as error:
                logger.warning("unmount for container %s: %s", self.id[:12], error)
            else:
                self._mounted = False
            finally:
                self._unmounting = None
                step.done.set()

        self._background.start_soon(unmount)

    async def _unmount(self) -> None:
        self._unmount_in_background()
        await self._settle()

    async def _delete_runtime_container(self) -> None:
        """Delete the runtime's container through the lock-in, once per run."""
        lockin = self._record.lockin
        if lockin is None or not self._runtime_container:
            return
        try:
            await self._host.runtime(lockin.binary).delete(self.id, True)
        except (DockyardError, OSError) as error:
            logger.warning("clean-up for container %s: %s", self.id[:12], error)
            return
        self._runtime_container = False

    async def _save(self, record: ContainerRecord) -> None:
        """Write the record after the writes in flight.

        No write waits for the disk. A change that a power loss takes away
        is settled by the recovery at the next daemon start.
        """
        await self._settle()
        await self._store.save(record)
        self._record = record

    def _save_in_background(self, record: ContainerRecord) -> _Step:
        """Take `record` now and write it while the operation goes on.

        Writes land in the order they were queued, as each waits for the
        one before it. A failure is logged and kept in the returned step.
        """
        self._record = record
        previous, step = self._last_write, _Step()
        self._last_write = step

        async def save() -> None:
            # Shielded like the unmount: a daemon whose nursery is cancelled
            # still writes what its operations took.
            try:
                with trio.CancelScope(shield=True):
                    await self._in_order(previous)
                    await self._store.save(record)
            except OSError as error:
                self._write_failed(error)
                step.error = error
            finally:
                step.done.set()

        self._background.start_soon(save)
        return step

    async def _in_order(self, previous: _Step | None) -> None:
        """Wait for the write queued before this one."""
        if previous is not None:
            await previous.done.wait()

    def _write_failed(self, error: OSError) -> None:
        if (
            isinstance(error, FileNotFoundError)
            and self._record.state.status == records.REMOVING
        ):
            logger.debug("dropped a record write of removed container %s", self.id[:12])
            return
        logger.error(
            "writing the record of container %s failed: %s", self.id[:12], error
        )

    async def _settle(self) -> None:
        """Wait for the record writes and the unmount in flight."""
        for step in (self._last_write, self._unmounting):
            if step is not None:
                await step.done.wait()

    async def _quietly(self, step: Awaitable[object]) -> None:
        """Await a clean-up step, logging a failure instead of raising it."""
        try:
            await step
        except (DockyardError, OSError) as error:
            logger.warning("clean-up for container %s: %s", self.id[:12], error)

    def _emit(self, action: str, **extra: str) -> None:
        attributes = {
            "name": self._record.name,
            "image": self._record.config.image,
            **self._record.config.labels,
            **extra,
        }
        self._events.emit("container", action, self.id, attributes)
