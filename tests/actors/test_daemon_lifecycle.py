"""Container lifecycle through the embedding API, on the fake host in virtual time.

These pin down ordering and error behaviour that real runc cannot be made
to show on demand; the integration and end-to-end suites run the same
operations for real.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
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
from actors.root_lock import RootLock
from actors.wrappers import WrapperStore
from messages import records
from messages.errors import Conflict, InvalidRequest, NotFound, RuntimeFailed
from messages.execspec import ExecOptions
from messages.requests import CreateContainer
from messages.wrapper import WRAPPER_DIRECTORY


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path)
    setup.initial()
    return setup


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


def _open(setup: Setup, machine: FakeMachine):  # type: ignore[no-untyped-def]
    return open_daemon(
        setup.config_file,
        flags=setup.flags,
        host=FakeHost(machine),
        wrappers=WrapperStore(Path(setup.flags.data_root or "") / WRAPPER_DIRECTORY),
        lookup=setup.lookup,
    )


@pytest.fixture
async def daemon(
    setup: Setup, machine: FakeMachine, autojump_clock: trio.testing.MockClock
) -> AsyncIterator[Daemon]:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        yield daemon


async def _create(daemon: Daemon, **fields: object) -> str:
    request = attrs.evolve(CreateContainer(image="tiny", cmd=("sleep", "1")), **fields)
    return (await daemon.create_container(request)).id


async def test_start_records_lockin(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    container_id = await _create(daemon, runtime="fast")
    assert daemon.container(container_id).lockin is None
    assert await daemon.start_container(container_id)
    record = daemon.container(container_id)
    assert record.state.status == records.RUNNING
    assert record.lockin is not None
    assert record.lockin.name == "fast"
    assert record.lockin.binary == daemon.snapshot().runtimes["fast"].binary
    assert record.lockin.generation == daemon.snapshot().generation
    assert record.lockin.apparmor_profile == ""
    assert not await daemon.start_container(container_id)


async def test_lockin_is_on_disk_before_runtime_create(
    autojump_clock: trio.testing.MockClock,
    daemon: Daemon,
    machine: FakeMachine,
    setup: Setup,
) -> None:
    container_id = await _create(daemon)
    hold = machine.hold("create")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.start_container, container_id)
        await hold.arrived.wait()
        record_file = Path(setup.flags.data_root or "") / "containers" / container_id
        saved = json.loads((record_file / "state.json").read_text())
        hold.released.set()
    assert saved["stored"]["lockin"]["name"] == "runc"
    assert saved["stored"]["lockin"]["binary"] == str(setup.runtime_a)


async def test_default_runtime_is_used_when_none_given(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    lockin = daemon.container(container_id).lockin
    assert lockin is not None
    assert lockin.name == "runc"


async def test_stop_signals_then_reaps(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    assert await daemon.stop_container(container_id, grace=2)
    record = daemon.container(container_id)
    assert record.state.status == records.EXITED
    assert record.state.exit_code == 128 + 15
    # The foreground run deleted its container when it exited.
    operations = [call.operation for call in machine.calls_for(container_id)]
    assert operations == ["create", "start", "kill"]
    assert not await daemon.stop_container(container_id)


async def test_undeleted_run_deleted_through_lockin(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    # As when runc itself is killed: the container may outlive it.
    machine.run_deletes = False
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    lockin = daemon.container(container_id).lockin
    assert lockin is not None
    init_pid = machine.containers[container_id]
    assert await daemon.stop_container(container_id, grace=2)
    calls = machine.calls_for(container_id)
    assert [call.operation for call in calls] == ["create", "start", "kill", "delete"]
    assert calls[-1].binary == lockin.binary
    await trio.testing.wait_all_tasks_blocked()
    assert machine.reaped_orphans == [init_pid]
    await daemon.remove_container(container_id)
    assert len(machine.calls_for(container_id)) == len(calls)


async def test_stop_kills_after_grace(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    process = machine.processes[machine.containers[container_id]]
    process.ignored_signals.add(signal.SIGTERM)
    start = trio.current_time()
    await daemon.stop_container(container_id, grace=5)
    assert trio.current_time() - start == pytest.approx(5)
    assert process.received_signals == [signal.SIGTERM, signal.SIGKILL]
    assert daemon.container(container_id).state.exit_code == 137


async def test_wait_conditions(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon)
    codes: dict[str, int] = {}

    async def wait(condition: str) -> None:
        codes[condition] = await daemon.wait_container(container_id, condition)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "next-exit")
        nursery.start_soon(wait, "removed")
        await trio.testing.wait_all_tasks_blocked()
        await daemon.start_container(container_id)
        machine.processes[machine.containers[container_id]].exit(3)
        assert await daemon.wait_container(container_id, "not-running") == 3
        await trio.testing.wait_all_tasks_blocked()
        assert codes == {"next-exit": 3}
        await daemon.remove_container(container_id)
    assert codes == {"next-exit": 3, "removed": 3}


async def test_wait_rejects_unknown_condition(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    container_id = await _create(daemon)
    with pytest.raises(InvalidRequest, match="invalid wait condition 'soon'"):
        await daemon.wait_container(container_id, "soon")


async def test_auto_remove_after_exit(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon, auto_remove=True)
    await daemon.start_container(container_id)
    machine.processes[machine.containers[container_id]].exit(0)
    assert await daemon.wait_container(container_id, "removed") == 0
    with pytest.raises(NotFound):
        daemon.container(container_id)


async def test_auto_remove_after_failed_start(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, setup: Setup
) -> None:
    container_id = await _create(daemon, auto_remove=True, runtime="fast")
    setup.runtime_a.unlink()
    with pytest.raises(InvalidRequest):
        await daemon.start_container(container_id)
    assert await daemon.wait_container(container_id, "removed") == 0
    with pytest.raises(NotFound):
        daemon.container(container_id)


async def test_remove_running_needs_force(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    container_id = await _create(daemon, name="web")
    await daemon.start_container(container_id)
    with pytest.raises(Conflict, match="container web is running"):
        await daemon.remove_container("web")
    await daemon.remove_container("web", force=True)
    assert daemon.containers(all=True) == []


async def test_kill_and_exec_need_a_running_container(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    container_id = await _create(daemon, name="idle")
    with pytest.raises(Conflict, match="container idle is not running"):
        await daemon.kill_container("idle", "SIGTERM")
    with pytest.raises(Conflict, match="container idle is not running"):
        daemon.create_exec("idle", ExecOptions(cmd=("true",)))
    await daemon.start_container(container_id)
    result = await daemon.exec("idle", ExecOptions(cmd=("true",)))
    assert result.exit_code == 0
    assert result.stdout == b"exec output\n"


async def test_lookup_errors(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    await _create(daemon, name="taken")
    with pytest.raises(NotFound, match="No such container: ghost"):
        daemon.container("ghost")
    with pytest.raises(Conflict, match='name "/taken" is already in use'):
        await _create(daemon, name="taken")
    with pytest.raises(NotFound, match="nope"):
        await daemon.create_container(CreateContainer(image="nope"))
    with pytest.raises(InvalidRequest) as caught:
        await _create(daemon, runtime="slow")
    assert "unknown runtime 'slow'; configured runtimes: fast, runc" in str(
        caught.value
    )


async def test_failed_preflight_leaves_nothing(
    autojump_clock: trio.testing.MockClock,
    daemon: Daemon,
    machine: FakeMachine,
    setup: Setup,
) -> None:
    container_id = await _create(daemon, runtime="fast")
    setup.runtime_a.unlink()
    with pytest.raises(InvalidRequest) as caught:
        await daemon.start_container(container_id)
    assert "fast" in str(caught.value)
    assert str(setup.runtime_a) in str(caught.value)
    record = daemon.container(container_id)
    assert record.lockin is None
    assert record.state.status == records.CREATED
    assert machine.calls_for(container_id) == []


async def test_failed_create_undoes_the_start(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon, runtime="fast")
    binary = daemon.snapshot().runtimes["fast"].binary

    async def vanish() -> None:
        Path(binary).unlink()

    hold = machine.hold("create")
    async with trio.open_nursery() as nursery:

        async def start() -> None:
            with pytest.raises(Exception, match="does not exist for create"):
                await daemon.start_container(container_id)

        nursery.start_soon(start)
        await hold.arrived.wait()
        await vanish()
        hold.released.set()
    record = daemon.container(container_id)
    assert record.lockin is None
    assert record.state.status == records.CREATED
    assert "does not exist" in record.state.error


async def test_records_survive_a_restart(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        kept = await _create(daemon, name="kept", runtime="fast")
        await daemon.start_container(kept)
        kept_binary = daemon.container(kept).lockin.binary  # type: ignore[union-attr]
    # The shutdown stopped it; change the configuration before the restart
    # so that the kept container's wrapper is no longer in the snapshot.
    setup.apply("args-changed")
    async with _open(setup, machine) as daemon:
        record = daemon.container("kept")
        assert record.state.status == records.EXITED
        assert Path(kept_binary).exists()
        await daemon.start_container("kept")
        assert daemon.container("kept").state.status == records.RUNNING
        await daemon.remove_container("kept", force=True)
    async with _open(setup, machine) as daemon:
        assert not Path(kept_binary).exists()
        assert daemon.containers(all=True) == []


async def test_events_for_lifecycle(
    autojump_clock: trio.testing.MockClock, daemon: Daemon
) -> None:
    with daemon.events() as events:
        container_id = await _create(daemon, name="ev")
        await daemon.start_container(container_id)
        await daemon.stop_container(container_id, grace=1)
        await daemon.remove_container(container_id)
        actions = []
        while True:
            try:
                actions.append(events.receive_nowait().action)
            except trio.WouldBlock:
                break
    assert actions == ["create", "start", "die", "stop", "destroy"]


async def test_negative_grace_never_kills(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    process = machine.processes[machine.containers[container_id]]
    process.ignored_signals.add(signal.SIGTERM)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.stop_container, container_id, -1)
        # Far past any grace period Docker would apply, in virtual time.
        await trio.sleep(86_000)
        assert process.received_signals == [signal.SIGTERM]
        process.exit(0)
    assert daemon.container(container_id).state.exit_code == 0


async def test_exec_failure_is_not_grouped(
    autojump_clock: trio.testing.MockClock, daemon: Daemon, machine: FakeMachine
) -> None:
    container_id = await _create(daemon)
    await daemon.start_container(container_id)
    machine.exec_failure = RuntimeFailed("exec failed: no such file")
    instance = daemon.create_exec(container_id, ExecOptions(cmd=("/nope",)))

    async def ignore(frame: bytes) -> None:
        pass

    with pytest.raises(RuntimeFailed, match="no such file"):
        await daemon.start_exec(instance.id, ignore)
    assert daemon.exec_instance(instance.id).exit_code == 126


async def test_interrupted_start_is_cleaned_at_restart(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon, name="half")
        record = daemon.container(container_id)
    # What a daemon killed between saving the lock-in and runtime start
    # leaves on disk.
    lockin = _lockin(setup)
    store = ContainerStore(Path(setup.flags.data_root or "") / "containers")
    await store.save(attrs.evolve(record, lockin=lockin))
    async with _open(setup, machine) as daemon:
        recovered = daemon.container("half")
        assert recovered.lockin is None
        assert recovered.state.status == records.CREATED
        assert "while the container was starting" in recovered.state.error
        operations = [call.operation for call in machine.calls_for(container_id)]
        assert operations == ["delete"]
        assert await daemon.start_container("half")


async def test_container_running_at_daemon_death_is_recovered(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon, name="running")
        record = daemon.container(container_id)
    # What a daemon killed while the container ran leaves: the state file
    # that the kernel kept for it.
    lockin = _lockin(setup)
    state = records.ContainerState(status=records.RUNNING, pid=4321)
    store = ContainerStore(Path(setup.flags.data_root or "") / "containers")
    await store.save(attrs.evolve(record, state=state, lockin=lockin))
    async with _open(setup, machine) as daemon:
        recovered = daemon.container("running")
        assert recovered.state.status == records.EXITED
        assert recovered.state.exit_code == 255
        assert "while the container was running" in recovered.state.error
        calls = machine.calls_for(container_id)
        assert [call.operation for call in calls] == ["delete"]
        assert calls[0].binary == str(setup.runtime_a)


async def test_state_lost_to_power_loss_loads_as_created(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon, name="lost")
        await daemon.start_container(container_id)
        await daemon.stop_container(container_id, grace=1)
    # A power loss on a file system that commits a rename before the data.
    (_on_disk(setup, container_id) / "state.json").write_bytes(b"")
    async with _open(setup, machine) as daemon:
        loaded = daemon.container("lost")
        assert loaded.state.status == records.CREATED
        assert loaded.lockin is None
        assert await daemon.start_container("lost")


class SlowStore(ContainerStore):
    """A store whose writes of one status take virtual seconds."""

    slow_status = records.RUNNING
    delay = 5.0

    async def save(self, record: records.ContainerRecord) -> None:
        if record.state.status == self.slow_status:
            await trio.sleep(self.delay)
        await super().save(record)


def _lockin(setup: Setup) -> records.RuntimeLockIn:
    """Return the lock-in that a start through runtime_a records."""
    return records.RuntimeLockIn(
        name="runc",
        binary=str(setup.runtime_a),
        path=str(setup.runtime_a),
        generation=1,
        apparmor_profile="",
    )


def _on_disk(setup: Setup, container_id: str) -> Path:
    return Path(setup.flags.data_root or "") / "containers" / container_id


@pytest.mark.parametrize("slow_status", [records.RUNNING, records.EXITED])
async def test_record_writes_land_in_order(
    autojump_clock: trio.testing.MockClock,
    setup: Setup,
    machine: FakeMachine,
    monkeypatch: pytest.MonkeyPatch,
    slow_status: str,
) -> None:
    # No operation waits for its writes, so each write waits for the one
    # queued before it, and the removal's deletion waits for all of them.
    monkeypatch.setattr(SlowStore, "slow_status", slow_status)
    monkeypatch.setattr("actors.daemon.ContainerStore", SlowStore)
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon)
        started = trio.current_time()
        await daemon.start_container(container_id)
        await daemon.stop_container(container_id, grace=1)
        assert trio.current_time() - started < SlowStore.delay
        await daemon.settle()
        record = json.loads((_on_disk(setup, container_id) / "state.json").read_text())
        assert record["stored"]["state"]["status"] == records.EXITED

        removed = await _create(daemon, name="removed")
        await daemon.start_container(removed)
        await daemon.stop_container(removed, grace=1)
        started = trio.current_time()
        await daemon.remove_container(removed)
        assert trio.current_time() - started < SlowStore.delay
        assert not _on_disk(setup, removed).exists()
        await daemon.settle()
        leftovers = [path.name for path in _on_disk(setup, removed).parent.iterdir()]
        assert leftovers == [container_id]

        # The shutdown waits for the last write.
        await daemon.start_container(container_id)
        await daemon.kill_container(container_id, "SIGTERM")
        await daemon.wait_container(container_id)
    record = json.loads((_on_disk(setup, container_id) / "state.json").read_text())
    assert record["stored"]["state"]["status"] == records.EXITED
    assert record["stored"]["state"]["exit_code"] == 128 + signal.SIGTERM


class ExitFirstStore(ContainerStore):
    """A store whose running-state write waits until the exit is on disk."""

    exit_written = trio.Event()
    running_written = trio.Event()

    async def save(self, record: records.ContainerRecord) -> None:
        if record.state.status == records.RUNNING:
            await self.exit_written.wait()
        await super().save(record)
        if record.state.status == records.EXITED:
            self.exit_written.set()
        if record.state.status == records.RUNNING:
            self.running_written.set()


async def test_negative_control_unordered_writes_lose_the_exit(
    autojump_clock: trio.testing.MockClock,
    setup: Setup,
    machine: FakeMachine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the wait for the write queued before, the running-state write
    # can land after the exit, and the record on disk then shows running.
    async def no_wait(self: object, previous: object) -> None:
        return None

    monkeypatch.setattr(container_actor.ContainerActor, "_in_order", no_wait)
    monkeypatch.setattr(ExitFirstStore, "exit_written", trio.Event())
    monkeypatch.setattr(ExitFirstStore, "running_written", trio.Event())
    monkeypatch.setattr("actors.daemon.ContainerStore", ExitFirstStore)
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon)
        await daemon.start_container(container_id)
        await daemon.stop_container(container_id, grace=1)
        await ExitFirstStore.running_written.wait()
    record = json.loads((_on_disk(setup, container_id) / "state.json").read_text())
    assert record["stored"]["state"]["status"] == records.RUNNING


async def test_stale_bundles_are_deleted_at_start(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon, name="kept")
    bundles = Path(setup.flags.exec_root or "") / "containers"
    # What a daemon killed between a removal's rename and its deletion
    # leaves, beside the bundle of a container that still exists.
    (bundles / ("f" * 64)).mkdir(parents=True)
    (bundles / ("f" * 64) / "config.json").write_text("{}")
    (bundles / container_id).mkdir()
    async with _open(setup, machine):
        pass
    assert [path.name for path in bundles.iterdir()] == [container_id]


async def _second_daemon_on_same_roots(
    setup: Setup, machine: FakeMachine
) -> tuple[list[str], Conflict | None]:
    """Run a container in one daemon while a second opens on the same roots.

    Returns the container's runtime calls before the first daemon stops,
    and the Conflict that the second open raised.
    """
    error = None
    async with _open(setup, machine) as daemon:
        await daemon.import_image(chunks_of(tiny_image_tar()), reference="tiny")
        container_id = await _create(daemon, cmd=("sleep", "100"))
        assert await daemon.start_container(container_id)
        try:
            async with _open(setup, machine):
                pass
        except Conflict as raised:
            error = raised
        assert daemon.container(container_id).state.status == records.RUNNING
        calls = machine.calls_for(container_id)
    return [call.operation for call in calls], error


async def test_second_daemon_on_same_roots_fails(
    autojump_clock: trio.testing.MockClock, setup: Setup, machine: FakeMachine
) -> None:
    operations, error = await _second_daemon_on_same_roots(setup, machine)

    assert error is not None
    assert "in use by another Dockyard daemon" in str(error)
    assert "delete" not in operations


async def test_negative_control_unlocked_roots_lose_container(
    autojump_clock: trio.testing.MockClock,
    setup: Setup,
    machine: FakeMachine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the lock, the second daemon's start-up recovery takes the
    # first daemon's running container for a crash leftover and deletes it.
    monkeypatch.setattr(RootLock, "acquire", classmethod(lambda cls, roots: cls([])))

    operations, error = await _second_daemon_on_same_roots(setup, machine)

    assert error is None
    assert "delete" in operations


async def test_relative_working_dir_rejected_at_create(daemon: Daemon) -> None:
    with pytest.raises(InvalidRequest, match="must be an absolute path"):
        await _create(daemon, working_dir="../../etc")

    assert daemon.containers(all=True) == []


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"working_dir": "/a\0b"}, "working directory"),
        ({"cmd": ("echo", "a\0b")}, "command"),
        ({"env": ("A=a\0b",)}, "environment variable"),
        ({"user": "ro\0ot"}, "user"),
        ({"hostname": "h\0h"}, "hostname"),
    ],
)
async def test_nul_byte_rejected_at_create(
    daemon: Daemon, fields: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidRequest, match=f"invalid {named} .*NUL byte"):
        await _create(daemon, **fields)

    assert daemon.containers(all=True) == []
