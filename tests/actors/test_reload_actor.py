"""The reload actor: transactions, coalescing, and what a reload applies."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from actors.config_actor import ConfigActor
from actors.events import EventBus
from actors.reload_actor import (
    MAX_CONFIG_BYTES,
    ConfigSource,
    ReloadActor,
    build_initial_snapshot,
)
from actors.wrappers import WrapperStore
from messages.config import DaemonFlags
from messages.errors import InvalidConfig
from messages.events import Event


class CountingStore(WrapperStore):
    """The real store, counting installs, and able to hold one until released."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.installs: list[str] = []
        self.hold: trio.Event | None = None
        self.held = trio.Event()

    async def install(self, runtime_name: str, content: bytes) -> tuple[str, bool]:
        self.installs.append(runtime_name)
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        return await super().install(runtime_name, content)


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "daemon.json"
        self.runtime = root / "bin" / "runtime"
        self.runtime.parent.mkdir()
        self.runtime.write_text("#!/bin/sh\n")
        self.runtime.chmod(0o755)
        self.flags = DaemonFlags(
            data_root=str(root / "data"), exec_root=str(root / "exec")
        )
        self.store = CountingStore(root / "data" / "runtimes")
        self.events = EventBus()

    def write(self, document: dict[str, object]) -> None:
        self.file.write_text(json.dumps(document))

    def lookup(self, name: str) -> str | None:
        return str(self.runtime) if name in ("runc", "on-path") else None

    async def open(self) -> tuple[ConfigActor, ReloadActor]:
        source = ConfigSource(path=self.file, flags=self.flags)
        snapshot = await build_initial_snapshot(source, self.store, self.lookup)
        config = ConfigActor(snapshot)
        reloads = ReloadActor(
            config=config,
            source=source,
            wrappers=self.store,
            events=self.events,
            lookup=self.lookup,
        )
        return config, reloads


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.write({"runtimes": {"fast": {"path": str(harness.runtime)}}})
    return harness


@pytest.fixture
async def actors(harness: Harness) -> AsyncIterator[tuple[ConfigActor, ReloadActor]]:
    config, reloads = await harness.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(reloads.run)
        yield config, reloads
        nursery.cancel_scope.cancel()


async def test_reload_publishes_new_generation(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    harness.write(
        {
            "runtimes": {"fast": {"path": str(harness.runtime), "runtimeArgs": ["-v"]}},
            "default-runtime": "fast",
            "labels": ["a=b"],
        }
    )
    with harness.events.subscribe() as events:
        outcome = await reloads.reload()
        event: Event = events.receive_nowait()
    assert outcome.ok
    assert outcome.generation == 2
    assert outcome.changed == ("runtimes", "default-runtime", "labels")
    snapshot = config.current()
    assert snapshot.generation == 2
    assert snapshot.config.default_runtime == "fast"
    fast = snapshot.runtimes["fast"]
    assert fast.binary.startswith(str(harness.store.directory / "fast."))
    assert Path(fast.binary).read_bytes() == fast.wrapper
    assert stat.S_IMODE(os.stat(fast.binary).st_mode) == 0o700
    assert event.type == "daemon"
    assert event.action == "reload"
    assert event.attributes["default-runtime"] == "fast"
    assert f"fast:{harness.runtime} -v" in event.attributes["runtimes"]
    assert event.attributes["labels"] == "a=b"
    assert event.attributes["shutdown-timeout"] == "15"
    assert event.attributes["debug"] == "false"


async def test_restart_keys_are_reported_and_rest_applies(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    harness.flags = DaemonFlags()
    before = config.current().config
    reloads._source = ConfigSource(path=harness.file)
    harness.write(
        {
            "data-root": str(harness.root / "elsewhere"),
            "exec-root": before.exec_root,
            "debug": True,
        }
    )
    outcome = await reloads.reload()
    assert outcome.ok
    assert outcome.restart_required == ("data-root",)
    assert "debug" in outcome.changed
    after = config.current().config
    assert after.debug is True
    assert after.data_root == before.data_root


async def test_bad_file_keeps_old_snapshot(
    harness: Harness,
    actors: tuple[ConfigActor, ReloadActor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, reloads = actors
    before = config.current()
    harness.file.write_text('{"runtimes": {"fast": {"path": 3}}}')
    with caplog.at_level(logging.ERROR):
        outcome = await reloads.reload()
    assert not outcome.ok
    assert outcome.generation == before.generation
    assert outcome.error is not None
    assert "runtimes.fast.path: expected a string" in outcome.error
    assert config.current() is before
    assert "reload failed, generation 1 stays in force" in caplog.text


async def test_failed_reload_rolls_back_its_new_wrappers(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    before = config.current()
    harness.write(
        {
            "runtimes": {
                "fast": {"path": str(harness.runtime), "runtimeArgs": ["--new"]},
                "missing": {"path": "not-on-path", "runtimeArgs": ["-x"]},
            }
        }
    )
    outcome = await reloads.reload()
    assert not outcome.ok
    assert outcome.error is not None
    assert "runtimes.missing.path 'not-on-path' was not found on PATH" in outcome.error
    assert harness.store.installs == ["fast"]
    assert list(harness.store.directory.iterdir()) == []
    assert config.current() is before


async def test_commit_keeps_existing_wrappers(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    harness.write(
        {"runtimes": {"fast": {"path": str(harness.runtime), "runtimeArgs": ["-a"]}}}
    )
    first = (await reloads.reload(), config.current().runtimes["fast"].binary)
    harness.write(
        {"runtimes": {"fast": {"path": str(harness.runtime), "runtimeArgs": ["-b"]}}}
    )
    await reloads.reload()
    second = config.current().runtimes["fast"].binary
    assert first[0].ok
    assert second != first[1]
    assert Path(first[1]).exists()
    assert Path(second).exists()


async def test_unchanged_runtimes_are_carried_over(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    runtimes = {
        f"r{index}": {"path": str(harness.runtime), "runtimeArgs": [str(index)]}
        for index in range(50)
    }
    harness.write({"runtimes": runtimes})
    await reloads.reload()
    assert len(harness.store.installs) == 50
    runtimes["r7"] = {"path": str(harness.runtime), "runtimeArgs": ["changed"]}
    harness.write({"runtimes": runtimes, "debug": True})
    before = config.current()
    await reloads.reload()
    after = config.current()
    assert harness.store.installs[50:] == ["r7"]
    assert after.runtimes["r8"] is before.runtimes["r8"]
    assert after.runtimes["r7"] is not before.runtimes["r7"]


async def test_requests_during_a_reload_coalesce(
    harness: Harness,
    actors: tuple[ConfigActor, ReloadActor],
    autojump_clock: trio.testing.MockClock,
) -> None:
    config, reloads = actors
    harness.store.hold = trio.Event()
    harness.write(
        {"runtimes": {"fast": {"path": str(harness.runtime), "runtimeArgs": ["0"]}}}
    )
    outcomes = []

    async def request() -> None:
        outcomes.append(await reloads.reload())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        await harness.store.held.wait()
        # Ten more requests while the first reload is held; the file keeps
        # changing, and the last content is what must end up in force.
        for number in range(1, 11):
            harness.write(
                {
                    "runtimes": {
                        "fast": {
                            "path": str(harness.runtime),
                            "runtimeArgs": [str(number)],
                        }
                    }
                }
            )
            nursery.start_soon(request)
            reloads.request()
        await trio.testing.wait_all_tasks_blocked()
        harness.store.hold.set()
    generations = sorted(outcome.generation for outcome in outcomes)
    assert generations == [2] + [3] * 10
    assert config.current().generation == 3
    assert config.current().runtimes["fast"].config.runtime_args == ("10",)
    assert harness.store.installs == ["fast", "fast"]


async def test_reload_with_given_config(
    harness: Harness, actors: tuple[ConfigActor, ReloadActor]
) -> None:
    config, reloads = actors
    given = config.current().config
    outcome = await reloads.reload(attrs.evolve(given, debug=True))
    assert outcome.ok
    assert outcome.changed == ("debug",)
    assert config.current().config.debug is True


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda path: os.mkfifo(path), "is not a regular file"),
        (lambda path: path.mkdir(), "is not a regular file"),
        (lambda path: path.write_bytes(b'\xff{"debug": true}'), "is not valid UTF-8"),
        (lambda path: path.write_bytes(b""), "the file is empty"),
        (
            lambda path: path.write_bytes(b" " * (MAX_CONFIG_BYTES + 1)),
            f"the maximum is {MAX_CONFIG_BYTES}",
        ),
    ],
)
def test_unusable_file_is_rejected(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    path = tmp_path / "daemon.json"
    make(path)
    with pytest.raises(InvalidConfig, match=expected):
        ConfigSource(path=path).load()


def test_missing_file_means_defaults_unless_required(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    flags = DaemonFlags(debug=True)
    assert ConfigSource(path=path, flags=flags, required=False).load().debug is True
    with pytest.raises(InvalidConfig, match="does not exist"):
        ConfigSource(path=path, flags=flags).load()
