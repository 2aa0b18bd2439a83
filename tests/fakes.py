"""A fake host for race tests, and the dockerd-20.10-style wrapper store.

The fake replaces runc, overlayfs and process reaping only where a
test needs control that real parts cannot give: holding a runtime call at
an exact point while a reload runs, or delaying every call by a virtual
time the test chooses. Its runtime checks, at every call, that the binary
it was invoked through exists and what that file holds, so a test can
tell whether a call went through the binary its container locked in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal as signals
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.runtime import RunExit, RuntimeBinaryMissing, preflight
from actors.wrappers import WrapperStore
from messages.execspec import ALL_CAPABILITIES
from messages.snapshot import ResolvedRuntime
from messages.wrapper import WRAPPER_MODE

FIRST_FAKE_PID = 40000


@attrs.frozen
class Call:
    """One runtime call as the fake saw it at the moment it was made."""

    operation: str
    container_id: str
    binary: str
    existed: bool
    digest: str | None


@attrs.define(eq=False)
class FakeProcess:
    pid: int
    exited: trio.Event = attrs.Factory(trio.Event)
    exit_code: int = 0
    fds: list[int] = attrs.Factory(list)
    # Signals this process ignores, as a program that traps SIGTERM does.
    ignored_signals: set[int] = attrs.Factory(set)
    received_signals: list[int] = attrs.Factory(list)

    def exit(self, code: int) -> None:
        if self.exited.is_set():
            return
        self.exit_code = code
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.exited.set()


class Hold:
    """Hold every call of one operation until released, and signal when one arrives."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.released = trio.Event()

    async def wait(self) -> None:
        self.arrived.set()
        await self.released.wait()


class FakeMachine:
    """The state behind FakeHost and FakeRuntime: calls, processes, holds."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.processes: dict[int, FakeProcess] = {}
        self.holds: dict[str, Hold] = {}
        # Awaited with the operation and the container id at the start of
        # every runtime call, before any hold. The race explorer sleeps here
        # for a random virtual time, so that calls interleave with reloads.
        self.delay: Callable[[str, str], Awaitable[None]] | None = None
        # Raised by every exec's wait, as runc's failure to start a process.
        self.exec_failure: Exception | None = None
        # Whether a run deletes its container when the process exits, as a
        # foreground `runc run` does unless runc itself is killed.
        self.run_deletes = True
        # Pids of inits that outlived their run and were reaped.
        self.reaped_orphans: list[int] = []
        # Container id to the pid of its fake init process.
        self.containers: dict[str, int] = {}
        self._next_pid = FIRST_FAKE_PID

    def hold(self, operation: str) -> Hold:
        self.holds[operation] = Hold()
        return self.holds[operation]

    @property
    def violations(self) -> list[Call]:
        """Calls made through a binary that did not exist at that moment."""
        return [call for call in self.calls if not call.existed]

    def calls_for(self, container_id: str) -> list[Call]:
        return [call for call in self.calls if call.container_id == container_id]

    async def enter(self, operation: str, container_id: str, binary: str) -> None:
        if self.delay is not None:
            await self.delay(operation, container_id)
        hold = self.holds.get(operation)
        if hold is not None:
            await hold.wait()
        existed = os.path.isfile(binary) and os.access(binary, os.X_OK)
        digest = _digest(binary) if existed else None
        self.calls.append(Call(operation, container_id, binary, existed, digest))
        if not existed:
            raise RuntimeBinaryMissing(
                f"fake runtime: {binary} does not exist for {operation}", binary
            )

    def spawn(self, fds: Iterable[int] = ()) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(self._next_pid, fds=[os.dup(fd) for fd in fds])
        self.processes[process.pid] = process
        return process


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FakeExec:
    def __init__(self, process: FakeProcess, failure: Exception | None) -> None:
        self._process = process
        self._failure = failure

    async def wait(self) -> int:
        await self._process.exited.wait()
        if self._failure is not None:
            raise self._failure
        return self._process.exit_code


class FakeRun:
    """A fake `runc run`, which deletes its container when the process exits."""

    def __init__(
        self, machine: FakeMachine, container_id: str, process: FakeProcess
    ) -> None:
        self._machine = machine
        self._container_id = container_id
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def runtime_pid(self) -> int:
        return self._process.pid

    async def reap_orphan(self) -> None:
        self._machine.reaped_orphans.append(self.pid)

    async def wait(self) -> RunExit:
        await self._process.exited.wait()
        deleted = self._machine.run_deletes
        if deleted and self._machine.containers.get(self._container_id) == self.pid:
            del self._machine.containers[self._container_id]
        return RunExit(code=self._process.exit_code, runtime_deleted=deleted)


@attrs.define
class FakeRuntime:
    machine: FakeMachine
    binary: str
    exec_exit_code: int = 0
    pids: dict[str, int] = attrs.Factory(dict)

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> int:
        await self.machine.enter("create", container_id, self.binary)
        process = self.machine.spawn((stdout, stderr))
        self.machine.containers[container_id] = process.pid
        return process.pid

    async def run(
        self,
        container_id: str,
        bundle: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> FakeRun:
        """Foreground `runc run`: recorded as the create and start it performs."""
        pid = await self.create(container_id, bundle, "", stdout=stdout, stderr=stderr)
        await self.start(container_id)
        return FakeRun(self.machine, container_id, self.machine.processes[pid])

    async def start(self, container_id: str) -> None:
        await self.machine.enter("start", container_id, self.binary)

    async def state(self, container_id: str) -> dict[str, Any]:
        await self.machine.enter("state", container_id, self.binary)
        return {"id": container_id, "status": "running"}

    async def kill(
        self, container_id: str, signal: int | str, all_processes: bool = False
    ) -> None:
        await self.machine.enter("kill", container_id, self.binary)
        process = self._process(container_id)
        if process is not None:
            name = signal if isinstance(signal, str) else signals.Signals(signal).name
            number = signals.Signals[name if name.startswith("SIG") else f"SIG{name}"]
            process.received_signals.append(number)
            if number not in process.ignored_signals:
                process.exit(128 + number)

    async def delete(self, container_id: str, force: bool = False) -> None:
        await self.machine.enter("delete", container_id, self.binary)
        self.machine.containers.pop(container_id, None)

    async def exec(
        self,
        container_id: str,
        process_json_path: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
        pid_file: str,
        log_file: str | None = None,
    ) -> FakeExec:
        await self.machine.enter("exec", container_id, self.binary)
        process = self.machine.spawn((stdout, stderr))
        os.write(process.fds[0], b"exec output\n")
        process.exit(self.exec_exit_code)
        return FakeExec(process, self.machine.exec_failure)

    def _process(self, container_id: str) -> FakeProcess | None:
        pid = self.machine.containers.get(container_id)
        return self.machine.processes.get(pid) if pid is not None else None


class FakeHost:
    """A host whose runtime is FakeRuntime and whose root filesystem is the image's."""

    apparmor_enabled = False
    privileged_capabilities = ALL_CAPABILITIES

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine

    def runtime(self, binary: str) -> FakeRuntime:
        return FakeRuntime(self.machine, binary)

    def preflight(self, runtime_name: str, binary: str, wrapped: str | None) -> None:
        preflight(runtime_name, binary, wrapped)

    def mount_rootfs(self, image_rootfs: Path, container_dir: Path) -> Path:
        return image_rootfs

    def unmount_rootfs(self, container_dir: Path) -> None:
        pass

    def mounted_rootfs(self, container_dirs: Sequence[Path]) -> set[Path]:
        return set()

    def runtime_state_exists(self, container_id: str) -> bool:
        return container_id in self.machine.containers

    @property
    def runtime_state_root(self) -> Path:
        return Path("/fake/runtime/state")

    async def run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()


class ReplacingWrapperStore(WrapperStore):
    """The negative control: wrappers handled as dockerd 20.10 handled them.

    Each reload deletes the wrapper directory and writes a wrapper for each
    runtime of the new configuration at `<dir>/<runtime-name>`, overwriting
    in place. A container locked in to a wrapper path then finds that path
    changed or gone after a reload.
    """

    async def begin_reload(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    async def install(self, runtime_name: str, content: bytes) -> tuple[str, bool]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / runtime_name
        path.write_bytes(content)
        path.chmod(WRAPPER_MODE)
        return str(path), True

    def carry_over(self, runtime: ResolvedRuntime) -> ResolvedRuntime:
        if runtime.wrapper is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / runtime.name
            path.write_bytes(runtime.wrapper)
            path.chmod(WRAPPER_MODE)
        return runtime

    def collect(self, referenced: Iterable[str]) -> list[str]:
        return []
