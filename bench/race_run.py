"""Running race schedules against the daemon core, and checking their calls.

Each schedule (see bench.race_schedules) runs against the real daemon core,
`open_daemon` with the fake host of tests/fakes.py, under the MockClock the
caller runs trio with. Every fake runtime call first sleeps for a random
virtual time, so starts, execs and stops interleave with the reloads.
After each schedule every runtime call the fake recorded is checked. A
call is a violation when the binary it went through did not exist at that
moment, or when that binary's content was not what the container locked
in. The locked-in content is that of `lockin.binary` in the snapshot of
`lockin.generation`: the wrapper the start resolved, or the runtime
executable when the runtime has no wrapper.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio.lowlevel

from actors.daemon import Daemon, open_daemon
from actors.wrappers import WrapperStore
from bench.race_schedules import (
    EXEC,
    EXECUTABLES,
    MAX_CALL_DELAY,
    START,
    STOP,
    UNDELAYED_SHARE,
    ConfigState,
    Operation,
    Schedule,
    make_schedule,
)
from messages.config import DaemonFlags
from messages.errors import DockyardError, NotFound
from messages.execspec import ExecOptions
from messages.records import RuntimeLockIn
from messages.requests import CreateContainer
from messages.snapshot import Snapshot
from messages.wrapper import WRAPPER_DIRECTORY
from tests.conftest import chunks_of, tiny_image_tar
from tests.fakes import FakeHost, FakeMachine, ReplacingWrapperStore

logger = logging.getLogger(__name__)

STORES: dict[str, Callable[[Path], WrapperStore]] = {
    "dockyard": WrapperStore,
    "replacing": ReplacingWrapperStore,
}
IMAGE = "tiny"
MISSING = "binary missing"
CHANGED = "content differs from the lock-in"
# Violations kept in the result, as examples to replay; the rest are counted.
MAX_EXAMPLES = 5
# Grace for stops, in virtual seconds; the fake init exits on SIGTERM at once.
STOP_GRACE = 1.0
EXEC_TRUE = ExecOptions(cmd=("true",))

T = TypeVar("T")


@attrs.frozen
class Violation:
    """One runtime call that broke the lock-in."""

    schedule: int
    container: int
    operation: str
    binary: str
    reason: str
    generations: tuple[int, ...]


@attrs.define
class Tally:
    """Counts over the schedules one store ran."""

    schedules: int = 0
    operations: int = 0
    rejected: int = 0
    runtime_calls: int = 0
    older_generation_calls: int = 0
    violations: int = 0
    violating_schedules: int = 0
    failed_reloads: int = 0
    # "operation: reason" to the number of violations of that kind.
    violation_kinds: collections.Counter[str] = attrs.Factory(collections.Counter)
    # "operation: error class" to the number of operations rejected with it.
    rejection_kinds: collections.Counter[str] = attrs.Factory(collections.Counter)
    cpu_seconds: float = 0.0
    examples: list[Violation] = attrs.Factory(list)

    def add(self, other: Tally) -> None:
        for field in attrs.fields(Tally):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if isinstance(mine, int | float):
                setattr(self, field.name, mine + theirs)
        self.violation_kinds.update(other.violation_kinds)
        self.rejection_kinds.update(other.rejection_kinds)
        room = MAX_EXAMPLES - len(self.examples)
        self.examples.extend(other.examples[:room])


class Workspace:
    """One directory reused by every schedule a worker runs.

    The image is imported once and kept; everything else the daemon wrote
    is removed before each schedule, so schedules do not depend on one
    another.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_file = root / "daemon.json"
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.executables: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        for name in EXECUTABLES:
            path = bin_dir / name
            content = f"#!/bin/sh\n# fake runtime {name}\nexit 0\n".encode()
            path.write_bytes(content)
            path.chmod(0o755)
            self.executables[name] = str(path)
            self.digests[str(path)] = hashlib.sha256(content).hexdigest()
        self.flags = DaemonFlags(
            data_root=str(self.data_root),
            exec_root=str(self.exec_root),
            hosts=(f"unix://{root / 'unused.sock'}",),
        )

    def lookup(self, name: str) -> str | None:
        """Look `name` up on a PATH that holds only runc, the first executable."""
        return self.executables[EXECUTABLES[0]] if name == "runc" else None

    def reset(self) -> None:
        for directory in (
            self.data_root / "containers",
            self.data_root / WRAPPER_DIRECTORY,
            self.exec_root,
        ):
            shutil.rmtree(directory, ignore_errors=True)

    def write_config(self, config: ConfigState) -> None:
        self.config_file.write_text(json.dumps(config.document(self.executables)))


@contextlib.contextmanager
def inline_worker_threads() -> Iterator[None]:
    """Run `trio.to_thread.run_sync` calls inline while the block is open.

    The daemon does blocking file work in worker threads. Under MockClock
    with autojump_threshold=0 the run loop counts a task waiting for a
    thread as blocked. It polls in a busy loop, which slows the thread down
    (bench/README.md has the numbers), and it jumps virtual time to the
    next deadline while the thread still runs, so the interleaving depends
    on real thread timing.

    Inline, each call checks for cancellation, runs the function, then
    yields to the scheduler without being cancellable, as a worker thread
    call that has started cannot be cancelled. Other tasks still run at
    that point, but a function's file work is atomic with respect to them.
    The keyword options of run_sync are ignored; the daemon passes none.

    The daemon makes its root directories with trio.Path, whose methods
    call `trio._path.run_sync`, so that name is replaced too.
    """
    original = trio.to_thread.run_sync
    path_module = getattr(trio, "_path", None)
    # NOTE: `trio._path` is private. If a trio release renames it, trio.Path
    # calls keep using real threads: slower, and still correct.
    original_path = getattr(path_module, "run_sync", None)

    async def run_inline(function: Callable[..., T], *args: Any, **_: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return function(*args)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    trio.to_thread.run_sync = run_inline  # type: ignore[assignment]
    if original_path is not None:
        path_module.run_sync = run_inline  # type: ignore[union-attr]
    try:
        yield
    finally:
        trio.to_thread.run_sync = original
        if original_path is not None:
            path_module.run_sync = original_path  # type: ignore[union-attr]


async def run_schedule(
    schedule: Schedule, store: str, workspace: Workspace, seed: int
) -> Tally:
    """Run one schedule on a fresh daemon and check every runtime call it made."""
    workspace.reset()
    workspace.write_config(schedule.initial)
    run = _ScheduleRun(schedule, workspace, seed)
    async with open_daemon(
        workspace.config_file,
        flags=workspace.flags,
        host=FakeHost(run.machine),
        wrappers=STORES[store](workspace.data_root / WRAPPER_DIRECTORY),
        lookup=workspace.lookup,
    ) as daemon:
        await run.execute(daemon)
    return run.check()


class _ScheduleRun:
    """One schedule's execution: what the explorer saw while the daemon ran it."""

    def __init__(self, schedule: Schedule, workspace: Workspace, seed: int) -> None:
        self.schedule = schedule
        self.workspace = workspace
        self.machine = FakeMachine()
        self.tally = Tally(schedules=1)
        # Every generation the daemon published, recorded by the reloading task.
        self.snapshots: dict[int, Snapshot] = {}
        # Container id to every lock-in its record held at a runtime call.
        self.lockins: dict[str, set[RuntimeLockIn]] = {}
        self.container_ids: list[str] = []
        self._delays = random.Random(f"{seed}/{schedule.index}/delays")
        self._begin = 0.0

    async def execute(self, daemon: Daemon) -> None:
        self._remember(daemon.snapshot())
        if not daemon.images():
            await daemon.import_image(chunks_of(tiny_image_tar()), reference=IMAGE)
        for runtime in self.schedule.container_runtimes:
            request = CreateContainer(
                image=IMAGE, cmd=("sleep", "1000"), runtime=runtime
            )
            self.container_ids.append((await daemon.create_container(request)).id)

        async def before_call(operation: str, container_id: str) -> None:
            await self._before_call(daemon, container_id)

        self.machine.delay = before_call
        self._begin = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reload_all, daemon)
            for operation in self.schedule.operations:
                nursery.start_soon(self._operate, daemon, operation)
        for container_id in self.container_ids:
            await self._finish(daemon, container_id)

    def check(self) -> Tally:
        """Count the violations among the calls recorded; call after the daemon ends."""
        numbers = {cid: number for number, cid in enumerate(self.container_ids)}
        violations = find_violations(
            self.machine,
            self.lockins,
            self.snapshots,
            self.workspace.digests,
            numbers,
            self.schedule.index,
        )
        tally = self.tally
        tally.runtime_calls = len(self.machine.calls)
        tally.violations = len(violations)
        tally.violating_schedules = 1 if violations else 0
        tally.violation_kinds.update(f"{v.operation}: {v.reason}" for v in violations)
        tally.examples = violations[:MAX_EXAMPLES]
        return tally

    async def _before_call(self, daemon: Daemon, container_id: str) -> None:
        """Note the container's lock-in, then sleep for a random virtual time."""
        try:
            lockin = daemon.container(container_id).lockin
        except NotFound:
            lockin = None
        if lockin is not None:
            self.lockins.setdefault(container_id, set()).add(lockin)
            if lockin.generation < daemon.snapshot().generation:
                self.tally.older_generation_calls += 1
        if self._delays.random() >= UNDELAYED_SHARE:
            await trio.sleep(self._delays.uniform(0, MAX_CALL_DELAY))

    def _remember(self, snapshot: Snapshot) -> None:
        self.snapshots[snapshot.generation] = snapshot

    async def _reload_all(self, daemon: Daemon) -> None:
        """Run the schedule's reloads one after another, as one operator would.

        Only this task reloads, so each generation is published while it
        waits in `reload` and recorded before the next reload can begin.
        """
        for reload in self.schedule.reloads:
            await trio.sleep_until(self._begin + reload.at)
            self.workspace.write_config(reload.config)
            outcome = await daemon.reload()
            self.tally.operations += 1
            if not outcome.ok:
                self.tally.failed_reloads += 1
                logger.error(
                    "schedule %d: reload failed: %s", self.schedule.index, outcome.error
                )
            self._remember(daemon.snapshot())

    async def _operate(self, daemon: Daemon, operation: Operation) -> None:
        container_id = self.container_ids[operation.container]
        await trio.sleep_until(self._begin + operation.at)
        if operation.kind == START:
            await self._tolerate(START, lambda: daemon.start_container(container_id))
        elif operation.kind == EXEC:
            await self._tolerate(EXEC, lambda: daemon.exec(container_id, EXEC_TRUE))
        else:
            await self._tolerate(
                STOP, lambda: daemon.stop_container(container_id, STOP_GRACE)
            )

    async def _finish(self, daemon: Daemon, container_id: str) -> None:
        """Exec in, stop and remove a container after every reload has run."""
        await self._tolerate(EXEC, lambda: daemon.exec(container_id, EXEC_TRUE))
        await self._tolerate(
            STOP, lambda: daemon.stop_container(container_id, STOP_GRACE)
        )
        await self._tolerate(
            "remove", lambda: daemon.remove_container(container_id, force=True)
        )

    async def _tolerate(self, kind: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run one operation; count it as rejected if the daemon raises a user error."""
        self.tally.operations += 1
        try:
            await step()
        except DockyardError as error:
            # Expected: not running, unknown runtime after a removal, or a
            # broken lock-in under the replacing store.
            self.tally.rejected += 1
            self.tally.rejection_kinds[f"{kind}: {type(error).__name__}"] += 1


def find_violations(
    machine: FakeMachine,
    lockins: dict[str, set[RuntimeLockIn]],
    snapshots: dict[int, Snapshot],
    executable_digests: dict[str, str],
    numbers: dict[str, int],
    index: int,
) -> list[Violation]:
    """Check every recorded call against the lock-ins of its container.

    A container started twice has two lock-ins, and an exec that began
    before a restart may still use the first, so a call passes when it
    matches any lock-in its container recorded.
    """
    violations = []
    for call in machine.calls:
        recorded = lockins.get(call.container_id, set())
        expected = {
            (lockin.binary, _locked_digest(lockin, snapshots, executable_digests))
            for lockin in recorded
        }
        if not call.existed:
            reason = MISSING
        elif (call.binary, call.digest) not in expected:
            reason = CHANGED
        else:
            continue
        violations.append(
            Violation(
                schedule=index,
                container=numbers.get(call.container_id, -1),
                operation=call.operation,
                binary=os.path.basename(call.binary),
                reason=reason,
                generations=tuple(sorted(lockin.generation for lockin in recorded)),
            )
        )
    return violations


def _locked_digest(
    lockin: RuntimeLockIn,
    snapshots: dict[int, Snapshot],
    executable_digests: dict[str, str],
) -> str | None:
    """Return the SHA-256 that `lockin.binary` had when the start resolved it."""
    snapshot = snapshots.get(lockin.generation)
    runtime = snapshot.runtimes.get(lockin.name) if snapshot is not None else None
    if runtime is None:
        return None
    if runtime.wrapper is not None:
        return hashlib.sha256(runtime.wrapper).hexdigest()
    return executable_digests.get(runtime.binary)


async def run_schedules(
    store: str, seed: int, indices: Sequence[int], directory: Path
) -> Tally:
    """Run schedules `indices` of `seed` against `store` in one workspace."""
    workspace = Workspace(directory)
    tally = Tally()
    started = time.process_time()
    for index in indices:
        schedule = make_schedule(seed, index)
        try:
            tally.add(await run_schedule(schedule, store, workspace, seed))
        except BaseException as error:
            error.add_note(
                f"race explorer: store {store}, seed {seed}, schedule {index}"
            )
            raise
    tally.cpu_seconds = time.process_time() - started
    return tally


def default_parent() -> str | None:
    """Return /dev/shm, a tmpfs where fsync is cheap, or None if it is missing."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else None
