"""The OCI runtime client, the reaper and overlay mounts against the real kernel.

Foreground runs need the pid file watcher too, which the `watcher` fixture
runs in a nursery for the test.

Tests marked `real` run busybox containers with runc under a runc `--root` in
the test's temporary directory, so they never see other runc users'
containers. They need root, runc, busybox-static and overlayfs. Without them
the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from actors.pidfiles import PidFileWatcher
from actors.reaper import (
    ExitStatusUnavailable,
    become_subreaper,
    is_subreaper,
    wait_for_exit,
)
from actors.rootfs import is_mounted, mount_overlay, unmount
from actors.runtime import (
    ContainerRun,
    ExecProcess,
    OciRuntime,
    RuntimeBinaryMissing,
    RuntimeCommandFailed,
    preflight,
)
from messages.errors import InvalidRequest, RuntimeFailed

T = TypeVar("T")

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = Path("/usr/bin/busybox")
BUSYBOX_COMMANDS = ("sh", "echo", "sleep", "cat", "id", "kill")
SUBCOMMANDS = frozenset({"create", "start", "state", "kill", "delete", "exec"})


def require_real(*, runc: bool = True) -> None:
    """Skip the test unless root, overlayfs and, with `runc`, runc and busybox exist.

    Under CI=true the test fails instead of skipping.
    """
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if runc and not os.access(RUNC, os.X_OK):
        missing.append(f"runc at {RUNC}")
    if runc and not BUSYBOX.is_file():
        missing.append(f"busybox-static at {BUSYBOX}")
    if "overlay" not in Path("/proc/filesystems").read_text():
        missing.append("overlayfs")
    if not missing:
        return

    reason = "needs " + ", ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, which CI=true requires: run as root after `make setup`")
    pytest.skip(reason)


def new_container_id() -> str:
    # runc's --root is per test, but cgroup paths are named after the id and
    # are shared by everyone on the machine, so ids are random.
    return f"dyt-{secrets.token_hex(6)}"


def process_spec(args: list[str], *, uid: int = 0, gid: int = 0) -> dict[str, object]:
    return {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
        "noNewPrivileges": True,
    }


def write_bundle(directory: Path, rootfs: Path, args: list[str]) -> Path:
    config = {
        "ociVersion": "1.0.2",
        "process": process_spec(args),
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "dockyard-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ]
        },
    }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    require_real()
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for command in BUSYBOX_COMMANDS:
        (root / "bin" / command).symlink_to("busybox")
    return root


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """A runc --root whose containers are force-deleted and reaped at teardown."""
    require_real()
    become_subreaper()
    root = tmp_path / "runc-state"
    yield root

    listed = subprocess.run(
        [RUNC, "--root", str(root), "list", "--format", "json"],
        capture_output=True,
        check=False,
    )
    containers = json.loads(listed.stdout or b"null") or []
    for container in containers:
        subprocess.run(
            [RUNC, "--root", str(root), "delete", "--force", container["id"]],
            capture_output=True,
            check=False,
        )
        # The init process is this test process's child once runc create has
        # exited; reap it so that no zombie outlives the test.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(container["pid"], 0)


@pytest.fixture
def runtime(state_root: Path) -> OciRuntime:
    return OciRuntime(binary=RUNC, state_root=str(state_root))


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    """A wrapper script like the daemon's, which also records its arguments."""
    calls = tmp_path / "wrapper-calls"
    return write_executable(
        tmp_path / "runc wrapper",
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> '{calls}'\n"
        f"exec '{RUNC}' '--debug' \"$@\"\n",
    )


async def read_until_eof(fd: int) -> bytes:
    chunks = []
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


async def with_output_pipes(
    start: Callable[[int, int], Awaitable[T]],
) -> tuple[T, int, int]:
    """Call `start` with the write ends of a stdout and a stderr pipe.

    Closes the write ends afterwards and returns what `start` returned and
    the read ends, which the caller closes.
    """
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    try:
        started = await start(stdout_write, stderr_write)
    except BaseException:
        os.close(stdout_read)
        os.close(stderr_read)
        raise
    finally:
        os.close(stdout_write)
        os.close(stderr_write)
    return started, stdout_read, stderr_read


async def create_with_pipes(
    runtime: OciRuntime, bundle: Path, container_id: str
) -> tuple[int, int, int]:
    """Create a container whose stdout and stderr are pipes.

    Returns the init pid and the read ends of the stdout and stderr pipes.
    """
    return await with_output_pipes(
        lambda stdout, stderr: runtime.create(
            container_id,
            str(bundle),
            str(bundle / "init.pid"),
            stdout=stdout,
            stderr=stderr,
        )
    )


async def run_to_exit(
    runtime: OciRuntime, bundle: Path, container_id: str
) -> tuple[int, bytes, bytes]:
    """Create and start a container, and return its exit code, stdout and stderr."""
    pid, stdout_read, stderr_read = await create_with_pipes(
        runtime, bundle, container_id
    )
    output: dict[str, bytes] = {}

    async def collect(name: str, fd: int) -> None:
        output[name] = await read_until_eof(fd)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, "stdout", stdout_read)
        nursery.start_soon(collect, "stderr", stderr_read)
        await runtime.start(container_id)
        exit_code = await wait_for_exit(pid)
    return exit_code, output["stdout"], output["stderr"]


async def exec_to_exit(
    runtime: OciRuntime,
    container_id: str,
    tmp_path: Path,
    args: list[str],
    *,
    uid: int = 0,
    stdin_data: bytes | None = None,
) -> tuple[ExecProcess, int, bytes, bytes]:
    """Exec `args` in a container and return the exec, exit code, stdout and stderr."""
    spec_path = tmp_path / f"exec-{secrets.token_hex(4)}.json"
    spec_path.write_text(json.dumps(process_spec(args, uid=uid, gid=uid)))
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    stdin_read, stdin_write = os.pipe() if stdin_data is not None else (None, None)
    try:
        execution = await runtime.exec(
            container_id,
            str(spec_path),
            stdout=stdout_write,
            stderr=stderr_write,
            stdin=stdin_read,
            pid_file=str(spec_path.with_suffix(".pid")),
        )
    except BaseException:
        for fd in (stdout_read, stderr_read, stdin_write):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (stdout_write, stderr_write, stdin_read):
            if fd is not None:
                os.close(fd)

    output: dict[str, bytes] = {}

    async def collect(name: str, fd: int) -> None:
        output[name] = await read_until_eof(fd)

    async def feed(fd: int, data: bytes) -> None:
        async with trio.lowlevel.FdStream(fd) as stream:
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, "stdout", stdout_read)
        nursery.start_soon(collect, "stderr", stderr_read)
        if stdin_write is not None and stdin_data is not None:
            nursery.start_soon(feed, stdin_write, stdin_data)

    # The pipes reach EOF when runc exits, so the output is complete here.
    exit_code = await execution.wait()
    return execution, exit_code, output["stdout"], output["stderr"]


async def start_sleeper(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> tuple[str, int]:
    """Start a container that sleeps until killed, and return its id and init pid."""
    container_id = new_container_id()
    bundle = write_bundle(tmp_path / container_id, rootfs, ["sleep", "100000"])
    pid, stdout_read, stderr_read = await create_with_pipes(
        runtime, bundle, container_id
    )
    os.close(stdout_read)
    os.close(stderr_read)
    await runtime.start(container_id)
    return container_id, pid


# Containers.


@pytest.mark.real
async def test_container_output_and_exit_zero(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    bundle = write_bundle(
        tmp_path / "bundle", rootfs, ["sh", "-c", "echo hello; echo oops >&2"]
    )

    exit_code, stdout, stderr = await run_to_exit(runtime, bundle, container_id)

    assert exit_code == 0
    assert stdout == b"hello\n"
    assert stderr == b"oops\n"
    state = await runtime.state(container_id)
    assert state["status"] == "stopped"


@pytest.mark.real
async def test_container_exit_status_three(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", "exit 3"])

    exit_code, _, _ = await run_to_exit(runtime, bundle, new_container_id())

    assert exit_code == 3


@pytest.mark.real
async def test_container_stdin_is_dev_null(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["cat"])

    exit_code, stdout, _ = await run_to_exit(runtime, bundle, new_container_id())

    assert exit_code == 0
    assert stdout == b""


@pytest.mark.real
async def test_container_sigkill_gives_137(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["sleep", "100000"])
    pid, stdout_read, stderr_read = await create_with_pipes(
        runtime, bundle, container_id
    )
    os.close(stdout_read)
    os.close(stderr_read)

    created = await runtime.state(container_id)
    assert created["status"] == "created"
    assert created["pid"] == pid
    await runtime.start(container_id)
    running = await runtime.state(container_id)
    assert running["status"] == "running"

    await runtime.kill(container_id, signal.SIGKILL)
    assert await wait_for_exit(pid) == 137

    stopped = await runtime.state(container_id)
    assert stopped["status"] == "stopped"
    await runtime.delete(container_id)
    with pytest.raises(RuntimeCommandFailed, match="container does not exist"):
        await runtime.state(container_id)


@pytest.mark.real
async def test_kill_by_signal_name(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    script = "trap 'exit 9' TERM; sleep 100000 & wait"
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", script])
    pid, stdout_read, stderr_read = await create_with_pipes(
        runtime, bundle, container_id
    )
    os.close(stdout_read)
    os.close(stderr_read)
    await runtime.start(container_id)

    await runtime.kill(container_id, "TERM")

    assert await wait_for_exit(pid) == 9


@pytest.mark.real
async def test_kill_all_processes(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, pid = await start_sleeper(runtime, tmp_path, rootfs)

    await runtime.kill(container_id, "SIGKILL", all_processes=True)

    assert await wait_for_exit(pid) == 137


@pytest.mark.real
async def test_delete_force_kills_running(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, pid = await start_sleeper(runtime, tmp_path, rootfs)

    with pytest.raises(RuntimeCommandFailed) as failure:
        await runtime.delete(container_id)
    assert container_id in str(failure.value)
    assert failure.value.exit_status != 0

    await runtime.delete(container_id, force=True)
    assert await wait_for_exit(pid) == 137
    with pytest.raises(RuntimeCommandFailed, match="container does not exist"):
        await runtime.state(container_id)


@pytest.mark.real
async def test_create_failure_names_runc_error(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["/no/such/program"])

    with pytest.raises(RuntimeCommandFailed) as failure:
        await create_with_pipes(runtime, bundle, container_id)

    message = str(failure.value)
    assert RUNC in message
    assert "create" in message
    assert container_id in message
    assert "/no/such/program" in failure.value.runtime_message
    assert "no such file or directory" in message


@pytest.mark.real
async def test_state_of_unknown_container(runtime: OciRuntime) -> None:
    with pytest.raises(RuntimeCommandFailed) as failure:
        await runtime.state("dyt-unknown")

    assert failure.value.runtime_message == "container does not exist"
    assert "state dyt-unknown" in str(failure.value)


# Exec.


@pytest.mark.real
async def test_exec_through_wrapper(
    state_root: Path, wrapper: Path, tmp_path: Path, rootfs: Path
) -> None:
    runtime = OciRuntime(binary=str(wrapper), state_root=str(state_root))
    container_id, _ = await start_sleeper(runtime, tmp_path, rootfs)

    execution, exit_code, stdout, stderr = await exec_to_exit(
        runtime,
        container_id,
        tmp_path,
        ["sh", "-c", "echo from-exec; id -u; echo warning >&2; exit 5"],
        uid=1000,
    )

    assert exit_code == 5
    assert stdout == b"from-exec\n1000\n"
    assert stderr == b"warning\n"
    assert execution.read_pid() > 0
    calls = (tmp_path / "wrapper-calls").read_text().splitlines()
    subcommands = [
        word for call in calls for word in call.split(" ") if word in SUBCOMMANDS
    ]
    assert subcommands == ["create", "start", "exec"]
    assert all(call.startswith(f"--root {state_root} ") for call in calls)


@pytest.mark.real
async def test_exec_streams_stdin(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, _ = await start_sleeper(runtime, tmp_path, rootfs)

    _, exit_code, stdout, _ = await exec_to_exit(
        runtime, container_id, tmp_path, ["cat"], stdin_data=b"ping\n" * 20000
    )

    assert exit_code == 0
    assert stdout == b"ping\n" * 20000


@pytest.mark.real
async def test_exec_signal_death_gives_137(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, _ = await start_sleeper(runtime, tmp_path, rootfs)

    _, exit_code, _, _ = await exec_to_exit(
        runtime, container_id, tmp_path, ["sh", "-c", "kill -9 $$"]
    )

    assert exit_code == 137


@pytest.mark.real
async def test_exec_missing_program_raises(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, _ = await start_sleeper(runtime, tmp_path, rootfs)

    with pytest.raises(RuntimeCommandFailed) as failure:
        await exec_to_exit(runtime, container_id, tmp_path, ["/no/such/program"])

    assert "/no/such/program" in failure.value.runtime_message
    assert f"exec {container_id}" in str(failure.value)


@pytest.mark.real
async def test_exec_unknown_container_raises(
    runtime: OciRuntime, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeCommandFailed) as failure:
        await exec_to_exit(runtime, "dyt-unknown", tmp_path, ["true"])

    assert "container does not exist" in failure.value.runtime_message


# Runtime binaries that cannot run. These need neither root nor runc.


@pytest.mark.parametrize("mode", [None, 0o644])
async def test_unusable_binary_raises(tmp_path: Path, mode: int | None) -> None:
    binary = tmp_path / "runtime"
    if mode is not None:
        binary.write_text("#!/bin/sh\n")
        binary.chmod(mode)
    runtime = OciRuntime(binary=str(binary), state_root=str(tmp_path / "state"))

    with pytest.raises(RuntimeBinaryMissing) as failure:
        await runtime.state("c1")
    assert failure.value.binary == str(binary)
    assert str(binary) in str(failure.value)
    assert "must not be removed" in str(failure.value)

    with pytest.raises(RuntimeBinaryMissing):
        await runtime.create(
            "c1", str(tmp_path), str(tmp_path / "pid"), stdout=1, stderr=2
        )
    with pytest.raises(RuntimeBinaryMissing):
        await runtime.exec(
            "c1",
            str(tmp_path / "p.json"),
            stdout=1,
            stderr=2,
            pid_file=str(tmp_path / "exec.pid"),
        )


async def test_wrapper_of_missing_runtime_raises(tmp_path: Path) -> None:
    wrapper = write_executable(
        tmp_path / "wrapper", "#!/bin/sh\nexec '/no/such/runc' \"$@\"\n"
    )
    runtime = OciRuntime(binary=str(wrapper), state_root=str(tmp_path / "state"))

    with pytest.raises(RuntimeCommandFailed) as failure:
        await runtime.state("c1")

    assert failure.value.exit_status == 127
    assert "/no/such/runc" in failure.value.runtime_message
    assert "wrapper script" in str(failure.value)


# Preflight. These need neither root nor runc.


def test_preflight_accepts_executable(tmp_path: Path) -> None:
    binary = write_executable(tmp_path / "runc", "#!/bin/sh\n")
    wrapper = write_executable(tmp_path / "wrapper", "#!/bin/sh\n")

    preflight("custom", str(binary), None)
    preflight("custom", str(wrapper), str(binary))
    preflight("custom", "sh", None)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("not executable", "is not executable (mode 0644)"),
        ("directory", "is a directory"),
        ("dangling symlink", "does not exist"),
        ("fifo", "is not a regular file"),
        ("not on PATH", "was not found on PATH"),
    ],
)
def test_preflight_rejects_runtime(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "runc"
    if case == "not executable":
        path.write_text("#!/bin/sh\n")
        path.chmod(0o644)
    elif case == "directory":
        path.mkdir()
    elif case == "dangling symlink":
        path.symlink_to(tmp_path / "gone")
    elif case == "fifo":
        os.mkfifo(path)
    binary = "dockyard-no-such-runtime" if case == "not on PATH" else str(path)

    with pytest.raises(InvalidRequest) as failure:
        preflight("custom", binary, None)

    message = str(failure.value)
    assert expected in message
    assert binary in message
    assert "'custom'" in message
    assert "runtimes.custom.path" in message


def test_preflight_rejects_wrapper_of_missing_runtime(tmp_path: Path) -> None:
    wrapper = write_executable(tmp_path / "wrapper", "#!/bin/sh\n")
    wrapped = tmp_path / "gone" / "runc"

    with pytest.raises(InvalidRequest) as failure:
        preflight("custom", str(wrapper), str(wrapped))

    message = str(failure.value)
    assert str(wrapped) in message
    assert "does not exist" in message
    assert "runtimes.custom.path" in message


def test_preflight_rejects_missing_wrapper(tmp_path: Path) -> None:
    binary = write_executable(tmp_path / "runc", "#!/bin/sh\n")
    wrapper = tmp_path / "runtimes" / "custom.0123"

    with pytest.raises(InvalidRequest) as failure:
        preflight("custom", str(wrapper), str(binary))

    message = str(failure.value)
    assert str(wrapper) in message
    assert "Restart the daemon" in message


# Reaper. These need neither root nor runc.


def spawn(script: str) -> int:
    return os.posix_spawn("/bin/sh", ["sh", "-c", script], os.environ)


def test_become_subreaper_twice() -> None:
    become_subreaper()
    become_subreaper()

    assert is_subreaper()


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137), ("kill -15 $$", 143)],
)
async def test_wait_for_exit_code(script: str, expected: int) -> None:
    pid = spawn(script)

    assert await wait_for_exit(pid) == expected


async def test_wait_for_reaped_pid_raises() -> None:
    pid = spawn("exit 0")
    os.waitpid(pid, 0)

    with pytest.raises(ExitStatusUnavailable) as failure:
        await wait_for_exit(pid)
    assert failure.value.pid == pid


async def test_wait_for_exit_cancelled_leaves_child() -> None:
    read_end, write_end = os.pipe()
    # The child exits with 7 once the pipe is closed, which needs no clock.
    pid = os.posix_spawn(
        "/bin/sh",
        ["sh", "-c", "read line; exit 7"],
        os.environ,
        file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)],
    )
    os.close(read_end)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_exit, pid)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    os.close(write_end)
    assert await wait_for_exit(pid) == 7


# Overlay mounts.


@pytest.fixture
def overlay_dirs(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Overlay directories whose names contain overlayfs's separators."""
    require_real(runc=False)
    names = {
        "lower": "lower,with:separators",
        "upper": "upper with space",
        "work": "work\\backslash",
        "target": "merged, target",
    }
    dirs = {role: tmp_path / name for role, name in names.items()}
    for directory in dirs.values():
        directory.mkdir()
    yield dirs

    while is_mounted(dirs["target"]):
        unmount(dirs["target"])


@pytest.mark.real
def test_overlay_mount_and_unmount(overlay_dirs: dict[str, Path]) -> None:
    lower, upper, target = (overlay_dirs[n] for n in ("lower", "upper", "target"))
    (lower / "from-image").write_text("image\n")
    assert not is_mounted(target)

    mount_overlay(lower, upper, overlay_dirs["work"], target)

    assert is_mounted(target)
    assert (target / "from-image").read_text() == "image\n"
    (target / "written").write_text("container\n")
    assert (upper / "written").read_text() == "container\n"
    assert not (lower / "written").exists()

    unmount(target)

    assert not is_mounted(target)
    assert not (target / "written").exists()
    unmount(target)
    unmount(target / "no-such-directory")


@pytest.mark.real
def test_is_mounted_follows_symlink(
    overlay_dirs: dict[str, Path], tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(overlay_dirs["target"])
    mount_overlay(
        overlay_dirs["lower"],
        overlay_dirs["upper"],
        overlay_dirs["work"],
        overlay_dirs["target"],
    )

    assert is_mounted(link)
    assert not is_mounted(overlay_dirs["lower"])


@pytest.mark.real
def test_unmount_busy_detaches(
    overlay_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    target = overlay_dirs["target"]
    mount_overlay(
        overlay_dirs["lower"], overlay_dirs["upper"], overlay_dirs["work"], target
    )

    with (target / "open").open("w"), caplog.at_level(logging.WARNING):
        unmount(target)
        assert not is_mounted(target)

    assert "detached" in caplog.text


@pytest.mark.real
def test_mount_missing_lower_raises(overlay_dirs: dict[str, Path]) -> None:
    lower = overlay_dirs["lower"] / "missing"
    target = overlay_dirs["target"]

    with pytest.raises(RuntimeFailed) as failure:
        mount_overlay(lower, overlay_dirs["upper"], overlay_dirs["work"], target)

    message = str(failure.value)
    assert str(target) in message
    assert "ENOENT" in message
    assert not is_mounted(target)


# Foreground runs: `runc run` waits for the container and deletes it.


@pytest.fixture
async def watcher(tmp_path: Path) -> AsyncIterator[PidFileWatcher]:
    pid_files = PidFileWatcher(tmp_path / "pids")
    async with trio.open_nursery() as nursery:
        await nursery.start(pid_files.run)
        yield pid_files
        nursery.cancel_scope.cancel()


@pytest.fixture
def running(state_root: Path, watcher: PidFileWatcher) -> OciRuntime:
    return OciRuntime(binary=RUNC, state_root=str(state_root), pid_files=watcher)


async def run_with_pipes(
    runtime: OciRuntime, bundle: Path, container_id: str
) -> tuple[ContainerRun, int, int]:
    """Run a container whose stdout and stderr are pipes; return their read ends."""
    return await with_output_pipes(
        lambda stdout, stderr: runtime.run(
            container_id, str(bundle), stdout=stdout, stderr=stderr
        )
    )


async def start_run_sleeper(
    runtime: OciRuntime, tmp_path: Path, rootfs: Path
) -> tuple[str, ContainerRun]:
    container_id = new_container_id()
    bundle = write_bundle(tmp_path / container_id, rootfs, ["sleep", "100000"])
    run, stdout_read, stderr_read = await run_with_pipes(runtime, bundle, container_id)
    os.close(stdout_read)
    os.close(stderr_read)
    return container_id, run


@pytest.mark.real
async def test_run_output_exit_status_and_self_delete(
    running: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    script = "echo hello; echo oops >&2; exit 3"
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", script])

    run, stdout_read, stderr_read = await run_with_pipes(running, bundle, container_id)
    stdout = await read_until_eof(stdout_read)
    stderr = await read_until_eof(stderr_read)
    ended = await run.wait()

    assert run.pid > 0
    assert (stdout, stderr) == (b"hello\n", b"oops\n")
    assert ended.code == 3
    assert ended.runtime_deleted
    assert not run.pid_file.exists()
    with pytest.raises(RuntimeCommandFailed, match="container does not exist"):
        await running.state(container_id)


@pytest.mark.real
async def test_run_returns_while_the_container_runs(
    running: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, run = await start_run_sleeper(running, tmp_path, rootfs)

    state = await running.state(container_id)
    assert state["status"] == "running"
    assert state["pid"] == run.pid

    # The container's init ignores SIGTERM without a handler, as any pid 1.
    await running.kill(container_id, signal.SIGKILL)
    ended = await run.wait()
    assert ended.code == 128 + signal.SIGKILL
    assert ended.runtime_deleted


@pytest.mark.real
async def test_run_failure_names_runc_error(
    running: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id = new_container_id()
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["/no/such/program"])

    with pytest.raises(RuntimeCommandFailed) as failure:
        await run_with_pipes(running, bundle, container_id)

    message = str(failure.value)
    assert f"{RUNC} run {container_id} failed" in message
    assert "/no/such/program" in failure.value.runtime_message
    assert not running.pid_files or not any(running.pid_files.directory.iterdir())


@pytest.mark.real
async def test_run_through_wrapper(
    watcher: PidFileWatcher,
    state_root: Path,
    wrapper: Path,
    tmp_path: Path,
    rootfs: Path,
) -> None:
    runtime = OciRuntime(
        binary=str(wrapper), state_root=str(state_root), pid_files=watcher
    )
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", "exit 5"])

    run, stdout_read, stderr_read = await run_with_pipes(
        runtime, bundle, new_container_id()
    )
    os.close(stdout_read)
    os.close(stderr_read)

    assert (await run.wait()).code == 5
    calls = (tmp_path / "wrapper-calls").read_text()
    assert f"--root {state_root}" in calls
    assert " run --bundle " in calls


@pytest.mark.real
async def test_killed_runc_leaves_container_to_delete(
    running: OciRuntime, tmp_path: Path, rootfs: Path
) -> None:
    container_id, run = await start_run_sleeper(running, tmp_path, rootfs)

    run.process.kill()
    ended = await run.wait()

    # SIGKILL cannot be forwarded, so the container outlives its runc.
    assert ended.code == 128 + signal.SIGKILL
    assert not ended.runtime_deleted
    assert (await running.state(container_id))["status"] == "running"
    await running.delete(container_id, force=True)
    # The test process is a subreaper, so the orphaned init is its child now,
    # and reap_orphan waits for it: no zombie is left.
    await run.reap_orphan()
    with pytest.raises(ProcessLookupError):
        os.kill(run.pid, 0)


@pytest.mark.real
async def test_unreadable_pid_file_fails_start_and_waits(
    watcher: PidFileWatcher, state_root: Path, tmp_path: Path, rootfs: Path
) -> None:
    marker = tmp_path / "runtime.pid"
    # A broken runtime: it writes junk as the pid and then keeps running.
    broken = write_executable(
        tmp_path / "broken-runtime",
        "#!/bin/sh\n"
        f"echo $$ > '{marker}'\n"
        "while [ $# -gt 0 ]; do\n"
        '  [ "$1" = --pid-file ] && echo junk > "$2"\n'
        "  shift\n"
        "done\n"
        "exec sleep 100000\n",
    )
    runtime = OciRuntime(
        binary=str(broken), state_root=str(state_root), pid_files=watcher
    )
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["true"])
    container_id = new_container_id()

    with pytest.raises(RuntimeFailed, match="cannot be read as a pid"):
        await run_with_pipes(runtime, bundle, container_id)

    # The runtime process was killed and waited for, and its pid file removed.
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)
    assert not watcher.path(f"{container_id}.pid").exists()


@pytest.mark.real
async def test_cancelled_start_kills_and_waits_for_runtime(
    watcher: PidFileWatcher, state_root: Path, tmp_path: Path, rootfs: Path
) -> None:
    fifo = tmp_path / "spawned"
    os.mkfifo(fifo)
    # A runtime that announces itself and then never starts the container.
    slow = write_executable(
        tmp_path / "slow-runtime",
        f"#!/bin/sh\necho $$ > '{fifo}'\nexec sleep 100000\n",
    )
    runtime = OciRuntime(
        binary=str(slow), state_root=str(state_root), pid_files=watcher
    )
    bundle = write_bundle(tmp_path / "bundle", rootfs, ["true"])
    shell_pid: list[int] = []

    async def cancel_once_spawned(scope: trio.CancelScope) -> None:
        text = await trio.to_thread.run_sync(fifo.read_text)
        shell_pid.append(int(text))
        scope.cancel()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_once_spawned, scope)
            with contextlib.suppress(RuntimeCommandFailed):
                await run_with_pipes(runtime, bundle, new_container_id())
    assert scope.cancelled_caught

    # The runtime process was killed and waited for: no zombie is left.
    with pytest.raises(ProcessLookupError):
        os.kill(shell_pid[0], 0)
