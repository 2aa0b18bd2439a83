"""The exec actor: it runs exec requests, many at once.

Each exec reads its container's record once, when it starts, and runs
through the binary that record locked in; the AppArmor profile comes from
the record too, so an exec can never be confined differently from its
container. The process spec is computed by `messages.execspec`.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from actors.container_actor import ContainerActor
from actors.events import EventBus
from actors.host import remove_tree
from actors.output import READ_SIZE
from actors.rootfs_files import resolve_container_user
from messages.errors import Conflict, DockyardError, NotFound
from messages.execspec import (
    DEFAULT_CAPABILITIES,
    ExecContainer,
    ExecOptions,
    exec_process,
)
from messages.oci import process_to_json
from messages.requests import with_default_path
from messages.stream import STDERR, STDOUT, encode_frame

logger = logging.getLogger(__name__)

FrameSink = Callable[[bytes], Awaitable[None]]

# Finished exec instances kept for `docker exec` to read their exit codes;
# the oldest go first, so a long-lived daemon does not grow without bound.
MAX_FINISHED_EXECS = 1024
# Exit code of an exec whose process could not be started (unknown user,
# missing program): the value dockerd's ContainerExecStart records.
EXEC_START_FAILED = 126


@attrs.define(eq=False)
class ExecInstance:
    id: str
    container: ContainerActor
    options: ExecOptions
    running: bool = False
    exit_code: int | None = None
    pid: int = 0


class ExecActor:
    def __init__(self, *, exec_root: Path, events: EventBus) -> None:
        self._exec_root = exec_root
        self._events = events
        self._instances: dict[str, ExecInstance] = {}
        self._finished: list[str] = []

    def create(self, container: ContainerActor, options: ExecOptions) -> ExecInstance:
        if not container.record.running:
            raise Conflict(f"container {container.record.name} is not running")
        instance = ExecInstance(secrets.token_hex(32), container, options)
        self._instances[instance.id] = instance
        return instance

    def get(self, exec_id: str) -> ExecInstance:
        instance = self._instances.get(exec_id)
        if instance is None:
            raise NotFound(f"no such exec instance: {exec_id}")
        return instance

    async def start(self, exec_id: str, sink: FrameSink) -> int:
        """Run the exec, send its output frames to `sink`, return its exit code."""
        instance = self.get(exec_id)
        if instance.running or instance.exit_code is not None:
            raise Conflict(f"exec {exec_id[:12]} has already been started")
        instance.running = True
        try:
            code = await self._run(instance, sink)
        except Exception:
            # A failed start ends the exec too, so `docker exec` reads a
            # failure from its exit code instead of a missing one (read as 0).
            instance.exit_code = EXEC_START_FAILED
            self._retire(instance.id)
            raise
        finally:
            instance.running = False
        instance.exit_code = code
        self._retire(instance.id)
        return code

    async def _run(self, instance: ExecInstance, sink: FrameSink) -> int:
        container = instance.container
        record = container.record
        if not record.running or record.lockin is None:
            raise Conflict(f"container {record.name} is not running")
        runtime = container.locked_runtime()
        process = await self._process(instance)
        directory = self._exec_root / "execs" / instance.id
        await trio.to_thread.run_sync(_write_process, directory, process)
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            try:
                handle = await runtime.exec(
                    record.id,
                    str(directory / "process.json"),
                    stdout=stdout_write,
                    stderr=stderr_write,
                    pid_file=str(directory / "exec.pid"),
                )
            finally:
                os.close(stdout_write)
                os.close(stderr_write)
            logger.info(
                "exec %s in container %s through %s",
                instance.id[:12],
                record.id[:12],
                runtime.binary,
            )
            failure: DockyardError | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward, STDOUT, stdout_read, sink)
                nursery.start_soon(_forward, STDERR, stderr_read, sink)
                stdout_read = stderr_read = -1
                try:
                    code = await handle.wait()
                except DockyardError as error:
                    # Raised after the nursery, so callers see the error
                    # itself rather than an exception group around it.
                    failure = error
            if failure is not None:
                raise failure
        finally:
            for fd in (stdout_read, stderr_read):
                if fd >= 0:
                    os.close(fd)
            await trio.to_thread.run_sync(remove_tree, directory)
        self._events.emit(
            "container",
            "exec_die",
            record.id,
            {"execID": instance.id, "exitCode": str(code), "name": record.name},
        )
        return code

    async def _process(self, instance: ExecInstance) -> bytes:
        record = instance.container.record
        assert record.lockin is not None
        config = record.config
        rootfs = instance.container.rootfs
        user = await resolve_container_user(
            rootfs, instance.options.user or config.user
        )
        container = ExecContainer(
            env=with_default_path(config.env),
            working_dir=config.working_dir,
            privileged=config.privileged,
            apparmor_profile=record.lockin.apparmor_profile,
            capabilities=DEFAULT_CAPABILITIES,
            all_capabilities=instance.container.host.privileged_capabilities,
        )
        process = exec_process(container=container, options=instance.options, user=user)
        return process_to_json(process)

    def _retire(self, exec_id: str) -> None:
        self._finished.append(exec_id)
        while len(self._finished) > MAX_FINISHED_EXECS:
            self._instances.pop(self._finished.pop(0), None)


def _write_process(directory: Path, process: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "process.json").write_bytes(process)


async def _forward(stream: int, fd: int, sink: FrameSink) -> None:
    async with trio.lowlevel.FdStream(fd) as pipe:
        while chunk := await pipe.receive_some(READ_SIZE):
            await sink(encode_frame(stream, chunk))
