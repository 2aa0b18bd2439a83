"""The reload race, forced deterministically in virtual time.

A fake runtime records every call with whether its binary existed and what
it held at that moment. The same scenarios run against the real wrapper
store, where the lock-in must hold, and against the dockerd 20.10 store,
where it must break: that is the negative control.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from fakes import FakeMachine, ReplacingWrapperStore
from race_scenarios import (
    CHANGES,
    Setup,
    create_container,
    daemon_for,
    held_start,
    manage_after_reloads,
)

from actors.wrappers import WrapperStore


@pytest.mark.parametrize("change", CHANGES)
async def test_held_start_uses_its_generation(
    change: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    report = await held_start(tmp_path, WrapperStore, change)
    first, reloaded, locked = report.generations
    assert reloaded == first + 1
    assert locked == first
    assert report.violations == []
    operations = [call.operation for call in report.calls]
    assert operations[:2] == ["create", "start"]
    assert "exec" in operations
    assert "kill" in operations
    # The run that the start made deleted its container itself.
    assert "delete" not in operations


@pytest.mark.parametrize("change", CHANGES)
async def test_lifecycle_after_reloads_uses_lockin(
    change: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    report = await manage_after_reloads(tmp_path, WrapperStore, change)
    assert len(report.generations) == 4
    assert report.violations == []
    operations = {call.operation for call in report.calls}
    assert {"create", "start", "exec", "kill"} <= operations


@pytest.mark.parametrize("change", CHANGES)
async def test_replacing_store_breaks_held_start(
    change: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    report = await held_start(tmp_path, ReplacingWrapperStore, change)
    assert report.violations != []


@pytest.mark.parametrize("change", CHANGES)
async def test_replacing_store_breaks_lifecycle(
    change: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    report = await manage_after_reloads(tmp_path, ReplacingWrapperStore, change)
    assert report.violations != []


class HeldStore(WrapperStore):
    """The real store, with the next install held until the test releases it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.held = trio.Event()
        self.release = trio.Event()
        self.holding = False

    async def install(self, runtime_name: str, content: bytes) -> tuple[str, bool]:
        if self.holding:
            self.held.set()
            await self.release.wait()
        return await super().install(runtime_name, content)


async def test_start_completes_while_reload_is_held(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    setup = Setup(tmp_path)
    setup.initial()
    machine = FakeMachine()
    stores: list[HeldStore] = []

    def make_store(directory: Path) -> HeldStore:
        stores.append(HeldStore(directory))
        return stores[-1]

    async with daemon_for(setup, machine, make_store) as daemon:
        container_id = await create_container(daemon)
        store = stores[0]
        store.holding = True
        setup.apply("args-changed")
        outcomes = []

        async def reload() -> None:
            outcomes.append(await daemon.reload())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reload)
            await store.held.wait()
            assert await daemon.start_container(container_id)
            record = daemon.container(container_id)
            assert record.lockin is not None
            assert record.lockin.generation == 1
            assert outcomes == []
            store.release.set()
        assert outcomes[0].generation == 2
        assert daemon.snapshot().generation == 2
        assert machine.violations == []
