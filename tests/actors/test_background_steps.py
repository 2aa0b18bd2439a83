"""The unmount after an exit and the deletion after a removal, in virtual time.

Neither operation waits for them: the next start waits for the unmount, and
the deletion waits for every write and unmount still in flight. The fake
host here models what makes that hard for real: a mount moves with its
directory when a removal renames it, and an unmount by the old path then
finds nothing. Its unmount is held by an event, so the tests pick the
interleaving.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from conftest import chunks_of, tiny_image_tar
from fakes import FakeHost, FakeMachine
from race_scenarios import Setup

from actors import container_actor
from actors.container_store import ContainerStore
from actors.daemon import Daemon, open_daemon
from actors.wrappers import WrapperStore
from messages import records
from messages.requests import CreateContainer
from messages.wrapper import WRAPPER_DIRECTORY

# Virtual seconds an exit's write takes on the slow store.
WRITE_SECONDS = 5.0


class MovingMountHost(FakeHost):
    """A host whose mounts follow their directory, known by its inode.

    Its unmount waits until the test sets `release`. The blocking calls run
    in worker threads, so they reach trio through trio.from_thread.
    """

    def __init__(self, machine: FakeMachine) -> None:
        super().__init__(machine)
        # Inode of each container directory that has a mount.
        self.mounts: set[int] = set()
        # The calls in order: ("mount" or "unmount", the directory's name).
        self.calls: list[tuple[str, str]] = []
        self.release = trio.Event()

    def mount_rootfs(self, image_rootfs: Path, container_dir: Path) -> Path:
        container_dir.mkdir(parents=True, exist_ok=True)
        self.mounts.add(container_dir.stat().st_ino)
        self.calls.append(("mount", container_dir.name))
        return image_rootfs

    def unmount_rootfs(self, container_dir: Path) -> None:
        trio.from_thread.run(self.release.wait)
        # As umount2(2) does, the path is looked up when the call is made:
        # after a rename the old path has no mount.
        if container_dir.exists():
            self.mounts.discard(container_dir.stat().st_ino)
        self.calls.append(("unmount", container_dir.name))


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


@attrs.define
class Opened:
    daemon: Daemon
    host: MovingMountHost
    containers: Path


@pytest.fixture
async def opened(
    tmp_path: Path, machine: FakeMachine, autojump_clock: trio.testing.MockClock
) -> AsyncIterator[Opened]:
    setup = Setup(tmp_path)
    setup.initial()
    host = MovingMountHost(machine)
    data_root = Path(setup.flags.data_root or "")
    async with open_daemon(
        setup.config_file,
        flags=setup.flags,
        host=host,
        wrappers=WrapperStore(data_root / WRAPPER_DIRECTORY),
        lookup=setup.lookup,
    ) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        try:
            yield Opened(daemon, host, data_root / "containers")
        finally:
            host.release.set()


async def _started(daemon: Daemon) -> str:
    record = await daemon.create_container(
        CreateContainer(image="tiny", cmd=("sleep", "1"))
    )
    await daemon.start_container(record.id)
    return record.id


async def _returns_while_held(operation: Awaitable[object]) -> None:
    """Assert that `operation` returns while the unmount is held."""
    returned = trio.Event()

    async def run() -> None:
        await operation
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert returned.is_set()


async def test_exit_does_not_wait_for_unmount(opened: Opened) -> None:
    container_id = await _started(opened.daemon)
    await _returns_while_held(opened.daemon.stop_container(container_id, grace=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(opened.daemon.start_container, container_id)
        await trio.testing.wait_all_tasks_blocked()
        assert opened.host.calls == [("mount", container_id)]
        opened.host.release.set()

    # The restart mounted again only once the unmount had finished.
    assert opened.host.calls == [
        ("mount", container_id),
        ("unmount", container_id),
        ("mount", container_id),
    ]
    assert len(opened.host.mounts) == 1


async def test_removal_during_unmount_unmounts_at_new_path(opened: Opened) -> None:
    container_id = await _started(opened.daemon)
    await opened.daemon.stop_container(container_id, grace=1)
    await _returns_while_held(opened.daemon.remove_container(container_id))
    assert not (opened.containers / container_id).exists()

    opened.host.release.set()
    await opened.daemon.settle()
    assert opened.host.calls[1:] == [
        ("unmount", container_id),
        ("unmount", f".removing-{container_id}"),
    ]
    assert opened.host.mounts == set()
    assert list(opened.containers.iterdir()) == []


async def test_negative_control_trusting_unmount_in_flight_leaks_mount(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deletion that relies on the unmount under way at the removal, which
    # looked up the old path, leaves the mount in place at the new one.
    purge = container_actor.ContainerActor._purge

    def trusting(
        self: container_actor.ContainerActor, discarded: Path | None, mounted: bool
    ) -> Awaitable[None]:
        return purge(self, discarded, False)

    monkeypatch.setattr(container_actor.ContainerActor, "_purge", trusting)
    container_id = await _started(opened.daemon)
    await opened.daemon.stop_container(container_id, grace=1)
    await opened.daemon.remove_container(container_id)
    opened.host.release.set()
    await opened.daemon.settle()
    assert len(opened.host.mounts) == 1


class SlowExitStore(ContainerStore):
    """A store whose write of the exit takes virtual seconds.

    With `makes_directory`, the negative control, the write then makes the
    container's directory before it writes, as a save that does not trust
    the directory to be there would.
    """

    makes_directory = False

    async def save(self, record: records.ContainerRecord) -> None:
        if record.state.status == records.EXITED:
            await trio.sleep(WRITE_SECONDS)
        if self.makes_directory:
            os.makedirs(self.directory(record.id), exist_ok=True)
        await super().save(record)


@pytest.mark.parametrize("makes_directory", [False, True])
async def test_late_write_after_removal(
    tmp_path: Path,
    machine: FakeMachine,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    makes_directory: bool,
) -> None:
    # The exit's write lands after the removal renamed the directory. It
    # must fail, not make the directory again. The negative control, a
    # save that makes its directory first, brings the container back.
    monkeypatch.setattr(SlowExitStore, "makes_directory", makes_directory)
    monkeypatch.setattr("actors.daemon.ContainerStore", SlowExitStore)
    setup = Setup(tmp_path)
    setup.initial()
    data_root = Path(setup.flags.data_root or "")
    async with open_daemon(
        setup.config_file,
        flags=setup.flags,
        host=FakeHost(machine),
        wrappers=WrapperStore(data_root / WRAPPER_DIRECTORY),
        lookup=setup.lookup,
    ) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _started(daemon)
        await daemon.stop_container(container_id, grace=1)
        await daemon.remove_container(container_id)
        await daemon.settle()
    state_file = data_root / "containers" / container_id / "state.json"
    if makes_directory:
        stored = json.loads(state_file.read_text())
        assert stored["stored"]["state"]["status"] == records.EXITED
    else:
        assert not state_file.exists()
        assert list((data_root / "containers").iterdir()) == []
