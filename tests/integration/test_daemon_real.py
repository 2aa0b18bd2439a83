"""The daemon through its embedding API, with real runc, overlayfs and processes.

The reload scenario here is the real counterpart of the virtual-time race
tests: a container started through a runtime with arguments stays
manageable after a reload drops the arguments, or drops the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from conftest import chunks_of, require_real

from actors import rootfs
from actors.busybox import BUSYBOX_CHANGES, build_busybox_tar
from actors.daemon import Daemon, open_daemon
from messages import records
from messages.config import DaemonFlags
from messages.errors import Conflict
from messages.execspec import ExecOptions
from messages.requests import CreateContainer
from messages.stream import STDERR, STDOUT, decode_frames

pytestmark = pytest.mark.real

# Seconds a stop may wait before SIGKILL; `sleep` as PID 1 ignores SIGTERM,
# so every stop of a sleeping container takes this long.
STOP_GRACE = 2
# Containers run and removed at once, each giving the removal a chance to
# meet the unmount in flight.
REMOVALS_RIGHT_AFTER_EXIT = 10


class RealSetup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_file = root / "daemon.json"
        self.runc = shutil.which("runc") or "runc"
        self.flags = DaemonFlags(
            data_root=str(root / "data"),
            exec_root=str(root / "exec"),
            hosts=(f"unix://{root / 'd.sock'}",),
        )

    def write(self, runtimes: dict[str, dict[str, object]], **keys: object) -> None:
        self.config_file.write_text(json.dumps({"runtimes": runtimes, **keys}))


@pytest.fixture
def setup(tmp_path: Path) -> RealSetup:
    require_real()
    return RealSetup(tmp_path)


@pytest.fixture
async def daemon(setup: RealSetup) -> AsyncIterator[Daemon]:
    setup.write({"fast": {"path": setup.runc, "runtimeArgs": ["--log-format", "text"]}})
    async with open_daemon(setup.config_file, flags=setup.flags) as daemon:
        tar = await trio.to_thread.run_sync(build_busybox_tar)
        await daemon.import_image(
            chunks_of(tar), reference="busybox", changes=BUSYBOX_CHANGES
        )
        yield daemon


async def _run(daemon: Daemon, *cmd: str, **fields: object) -> str:
    request = CreateContainer(image="busybox", cmd=cmd, **fields)  # type: ignore[arg-type]
    record = await daemon.create_container(request)
    await daemon.start_container(record.id)
    return record.id


async def test_run_to_completion(daemon: Daemon) -> None:
    container_id = await _run(daemon, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert await daemon.wait_container(container_id) == 3
    frames = list(decode_frames(await daemon.container_logs(container_id)))
    assert (STDOUT, b"out\n") in frames
    assert (STDERR, b"err\n") in frames
    record = daemon.container(container_id)
    assert record.state.status == records.EXITED
    await daemon.settle()
    data_root = Path(daemon.snapshot().config.data_root)
    assert not rootfs.is_mounted(data_root / "containers" / container_id / "rootfs")
    await daemon.remove_container(container_id)


async def test_removal_right_after_exit(daemon: Daemon) -> None:
    # The removal comes while the exit's unmount and write may be in flight;
    # the deletion after it unmounts at the renamed path and leaves nothing.
    data_root = Path(daemon.snapshot().config.data_root)
    for _ in range(REMOVALS_RIGHT_AFTER_EXIT):
        container_id = await _run(daemon, "true")
        assert await daemon.wait_container(container_id) == 0
        await daemon.remove_container(container_id)
    await daemon.settle()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(data_root) not in mounts
    assert list((data_root / "containers").iterdir()) == []


async def test_only_loopback_is_up(daemon: Daemon) -> None:
    container_id = await _run(daemon, "ip", "-o", "link")
    assert await daemon.wait_container(container_id) == 0
    output = b"".join(
        data for _, data in decode_frames(await daemon.container_logs(container_id))
    ).decode()
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert ": lo:" in lines[0]
    assert "UP" in lines[0]


async def test_root_filesystem_is_an_overlay(daemon: Daemon) -> None:
    container_id = await _run(daemon, "sleep", "1000")
    data_root = Path(daemon.snapshot().config.data_root)
    merged = data_root / "containers" / container_id / "rootfs"
    assert rootfs.is_mounted(merged)
    result = await daemon.exec(container_id, ExecOptions(cmd=("touch", "/made")))
    assert result.exit_code == 0
    assert (data_root / "containers" / container_id / "upper" / "made").exists()
    await daemon.stop_container(container_id, grace=STOP_GRACE)
    await daemon.settle()
    assert not rootfs.is_mounted(merged)
    await daemon.remove_container(container_id)
    assert not (data_root / "containers" / container_id).exists()


async def test_exec_output_user_and_exit_code(daemon: Daemon) -> None:
    container_id = await _run(daemon, "sleep", "1000", runtime="fast")
    result = await daemon.exec(container_id, ExecOptions(cmd=("echo", "hi")))
    assert (result.exit_code, result.stdout) == (0, b"hi\n")
    result = await daemon.exec(container_id, ExecOptions(cmd=("sh", "-c", "exit 7")))
    assert result.exit_code == 7
    result = await daemon.exec(container_id, ExecOptions(cmd=("id", "-u"), user="app"))
    assert result.stdout == b"1000\n"
    result = await daemon.exec(
        container_id,
        ExecOptions(cmd=("sh", "-c", "echo $K; pwd"), env=("K=V",), working_dir="/tmp"),
    )
    assert result.stdout == b"V\n/tmp\n"
    await daemon.remove_container(container_id, force=True)


async def test_exec_into_stopped_container_conflicts(daemon: Daemon) -> None:
    container_id = await _run(daemon, "true")
    await daemon.wait_container(container_id)
    with pytest.raises(Conflict, match="is not running"):
        daemon.create_exec(container_id, ExecOptions(cmd=("true",)))


async def test_stop_kills_after_grace(daemon: Daemon) -> None:
    container_id = await _run(daemon, "sleep", "1000")
    assert await daemon.stop_container(container_id, grace=STOP_GRACE)
    record = daemon.container(container_id)
    assert record.state.exit_code == 137
    await daemon.remove_container(container_id)


async def test_stop_with_a_signal_the_process_handles(daemon: Daemon) -> None:
    script = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    container_id = await _run(daemon, "sh", "-c", script)
    assert await daemon.stop_container(container_id, grace=30)
    assert daemon.container(container_id).state.exit_code == 0
    await daemon.remove_container(container_id)


async def test_kill_with_a_signal(daemon: Daemon) -> None:
    container_id = await _run(
        daemon, "sh", "-c", "trap 'exit 9' USR1; sleep 1000 & wait"
    )
    await daemon.kill_container(container_id, "SIGUSR1")
    assert await daemon.wait_container(container_id) == 9
    await daemon.remove_container(container_id)


@pytest.mark.parametrize("change", ["args-dropped", "runtime-removed"])
async def test_container_survives_reload(
    setup: RealSetup, daemon: Daemon, change: str
) -> None:
    container_id = await _run(daemon, "sleep", "1000", runtime="fast")
    lockin = daemon.container(container_id).lockin
    assert lockin is not None
    assert lockin.binary != setup.runc
    if change == "args-dropped":
        setup.write({"fast": {"path": setup.runc}})
    else:
        setup.write({})
    outcome = await daemon.reload()
    assert outcome.ok, outcome.error
    assert os.path.exists(lockin.binary)
    result = await daemon.exec(container_id, ExecOptions(cmd=("echo", "still here")))
    assert result.stdout == b"still here\n"
    # The stop goes through the locked-in wrapper: SIGTERM (ignored by
    # sleep as PID 1), then SIGKILL after the grace period.
    assert await daemon.stop_container(container_id, grace=STOP_GRACE)
    assert daemon.container(container_id).state.exit_code == 137
    await daemon.remove_container(container_id)
    assert os.path.exists(lockin.binary)
