"""Reload-versus-lifecycle scenarios, run against a wrapper store under test.

Each scenario starts a daemon on a fake host, forces one interleaving of a
container operation and a reload, and returns what the fake runtime saw.
The lock-in holds when every call for the container went through a binary
that existed at that moment and held the content of the generation the
container started with. The tests run the scenarios against the real
WrapperStore (which must hold) and against ReplacingWrapperStore, the
dockerd 20.10 strategy (which must break).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio
from conftest import chunks_of, tiny_image_tar
from fakes import Call, FakeHost, FakeMachine

from actors.daemon import Daemon, open_daemon
from actors.wrappers import WrapperStore
from messages.config import DaemonFlags
from messages.errors import DockyardError
from messages.execspec import ExecOptions
from messages.requests import CreateContainer
from messages.wrapper import WRAPPER_DIRECTORY

StoreFactory = Callable[[Path], WrapperStore]

# The configuration changes a held operation must survive.
CHANGES = ("args-changed", "args-dropped", "runtime-removed", "path-changed")
RUNTIME = "fast"


@attrs.frozen
class Report:
    """What one scenario observed."""

    calls: tuple[Call, ...]
    locked_binary: str
    locked_digest: str | None
    generations: tuple[int, ...]

    @property
    def violations(self) -> list[Call]:
        """Calls through a missing binary, or one whose content changed."""
        return [
            call
            for call in self.calls
            if not call.existed
            or call.binary != self.locked_binary
            or call.digest != self.locked_digest
        ]


class Setup:
    """Files for one scenario: two fake runtime executables and daemon.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_file = root / "daemon.json"
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_a = _executable(bin_dir / "runtime-a")
        self.runtime_b = _executable(bin_dir / "runtime b with space")
        self.flags = DaemonFlags(
            data_root=str(root / "data"),
            exec_root=str(root / "exec"),
            hosts=(f"unix://{root / 'unused.sock'}",),
        )

    def lookup(self, name: str) -> str | None:
        return str(self.runtime_a) if name == "runc" else None

    def write_config(self, runtimes: dict[str, dict[str, object]]) -> None:
        self.config_file.write_text(json.dumps({"runtimes": runtimes}))

    def initial(self) -> None:
        self.write_config(
            {RUNTIME: {"path": str(self.runtime_a), "runtimeArgs": ["--debug", "a b"]}}
        )

    def apply(self, change: str) -> None:
        configs: dict[str, dict[str, dict[str, object]]] = {
            "args-changed": {
                RUNTIME: {"path": str(self.runtime_a), "runtimeArgs": ["--log=x"]}
            },
            "args-dropped": {RUNTIME: {"path": str(self.runtime_a)}},
            "runtime-removed": {},
            "path-changed": {
                RUNTIME: {
                    "path": str(self.runtime_b),
                    "runtimeArgs": ["--debug", "a b"],
                }
            },
        }
        self.write_config(configs[change])


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def daemon_for(
    setup: Setup, machine: FakeMachine, store: StoreFactory
) -> contextlib.AbstractAsyncContextManager[Daemon]:
    return open_daemon(
        setup.config_file,
        flags=setup.flags,
        host=FakeHost(machine),
        wrappers=store(Path(setup.flags.data_root or "") / WRAPPER_DIRECTORY),
        lookup=setup.lookup,
    )


async def create_container(daemon: Daemon) -> str:
    await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
    record = await daemon.create_container(
        CreateContainer(image="tiny", cmd=("sleep", "1000"), runtime=RUNTIME)
    )
    return record.id


def _digest_of(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def held_start(root: Path, store: StoreFactory, change: str) -> Report:
    """A start that read generation N is held at runtime create past a reload."""
    setup = Setup(root)
    setup.initial()
    machine = FakeMachine()
    async with daemon_for(setup, machine, store) as daemon:
        container_id = await create_container(daemon)
        before = daemon.snapshot()
        locked = before.runtimes[RUNTIME].binary
        locked_digest = _digest_of(locked)
        hold = machine.hold("create")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tolerate, lambda: daemon.start_container(container_id))
            await hold.arrived.wait()
            setup.apply(change)
            outcome = await daemon.reload()
            assert outcome.ok, outcome.error
            hold.released.set()
        after_start = daemon.container(container_id)
        await _manage(daemon, container_id)
        return Report(
            calls=tuple(machine.calls_for(container_id)),
            locked_binary=locked,
            locked_digest=locked_digest,
            generations=(before.generation, outcome.generation)
            + ((after_start.lockin.generation,) if after_start.lockin else ()),
        )


async def manage_after_reloads(root: Path, store: StoreFactory, change: str) -> Report:
    """Exec, stop and remove after several reloads use the locked-in binary."""
    setup = Setup(root)
    setup.initial()
    machine = FakeMachine()
    async with daemon_for(setup, machine, store) as daemon:
        container_id = await create_container(daemon)
        before = daemon.snapshot()
        locked = before.runtimes[RUNTIME].binary
        locked_digest = _digest_of(locked)
        await daemon.start_container(container_id)
        generations = [before.generation]
        for step in (change, "args-changed", change):
            setup.apply(step)
            outcome = await daemon.reload()
            assert outcome.ok, outcome.error
            generations.append(outcome.generation)
        await _manage(daemon, container_id)
        return Report(
            calls=tuple(machine.calls_for(container_id)),
            locked_binary=locked,
            locked_digest=locked_digest,
            generations=tuple(generations),
        )


async def _manage(daemon: Daemon, container_id: str) -> None:
    """Exec, stop and remove the container, tolerating failures of a broken store."""
    await _tolerate(lambda: daemon.exec(container_id, ExecOptions(cmd=("true",))))
    await _tolerate(lambda: daemon.stop_container(container_id, grace=2))
    await _tolerate(lambda: daemon.remove_container(container_id, force=True))


async def _tolerate(step: Callable[[], Awaitable[object]]) -> None:
    """Run a step whose failure the report shows: a broken store makes it fail."""
    with contextlib.suppress(DockyardError):
        await step()
