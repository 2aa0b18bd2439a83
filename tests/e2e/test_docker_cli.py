"""A real `dockyard daemon` process, driven by the real docker CLI.

Each daemon runs on its own data root, exec root and socket in a temporary
directory, with the busybox image imported before it starts. The docker CLI
gets its own DOCKER_CONFIG, so nothing of the host's docker setup is used.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import (
    COMMAND_TIMEOUT,
    DOCKYARD,
    DaemonProcess,
    running_daemon,
    start_daemon,
)

pytestmark = [pytest.mark.real, pytest.mark.docker_cli]

# A container that exits at once on SIGTERM; sh runs the trap after `sleep 1`.
TERMINABLE = "trap 'exit 0' TERM; while :; do sleep 1; done"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as started:
        yield started
        code = started.terminate()
        assert code == 0, started.log()


def names(daemon: DaemonProcess, *flags: str) -> list[str]:
    listed = daemon.docker("ps", *flags, "--format", "{{.Names}}")
    assert listed.code == 0, listed.stderr
    return listed.stdout.split()


# --- Tests ----------------------------------------------------------------------------


def test_version_and_info(daemon: DaemonProcess) -> None:
    version = daemon.docker("version")
    assert version.code == 0, version.stderr
    assert "Server: Dockyard" in version.stdout
    assert "1.43" in version.stdout
    info = daemon.docker("info")
    assert info.code == 0, info.stderr
    assert "Runtimes: runc" in info.stdout
    assert "Default Runtime: runc" in info.stdout


def test_run_rm_prints_hello(daemon: DaemonProcess) -> None:
    result = daemon.docker("run", "--rm", "--name", "hello", "busybox", "echo", "hello")
    assert result.code == 0, result.stderr
    assert result.stdout == "hello\n"
    assert "hello" not in names(daemon, "-a")


def test_run_rm_failed_start_returns(daemon: DaemonProcess) -> None:
    result = daemon.docker("run", "--rm", "--name", "broken", "busybox", "nosuchcmd")
    assert result.code != 0
    assert "nosuchcmd" in result.stderr
    assert "broken" not in names(daemon, "-a")


def test_run_passes_exit_code_and_stderr(daemon: DaemonProcess) -> None:
    result = daemon.docker(
        "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 5"
    )
    assert result.code == 5
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_detached_container_lifecycle(daemon: DaemonProcess) -> None:
    started = daemon.docker(
        "run",
        "--name",
        "c1",
        "-d",
        "busybox",
        "sh",
        "-c",
        "echo started; exec sleep 1000",
    )
    assert started.code == 0, started.stderr
    container_id = started.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)

    hi = daemon.docker("exec", "c1", "echo", "hi")
    assert hi.code == 0, hi.stderr
    assert hi.stdout == "hi\n"
    assert daemon.docker("exec", "c1", "sh", "-c", "exit 3").code == 3
    uid = daemon.docker("exec", "-u", "app", "c1", "id", "-u")
    assert uid.code == 0, uid.stderr
    assert uid.stdout == "1000\n"
    streams = daemon.docker("exec", "c1", "sh", "-c", "echo out; echo err >&2")
    assert streams.stdout == "out\n"
    assert streams.stderr == "err\n"
    missing_user = daemon.docker("exec", "-u", "nobody2", "c1", "true")
    assert missing_user.code == 126
    assert "nobody2" in missing_user.stderr

    listed = daemon.docker("ps")
    assert listed.code == 0, listed.stderr
    assert "c1" in listed.stdout
    assert "Up " in listed.stdout

    inspected = daemon.docker("inspect", "c1")
    assert inspected.code == 0, inspected.stderr
    document = json.loads(inspected.stdout)[0]
    assert document["Id"] == container_id
    assert document["Name"] == "/c1"
    assert document["State"]["Running"] is True
    assert document["Dockyard"]["Runtime"] == "runc"
    assert document["Dockyard"]["RuntimeBinary"] == shutil.which("runc")
    assert document["Dockyard"]["Generation"] == 1

    stopped = daemon.docker("stop", "-t", "2", "c1")
    assert stopped.code == 0, stopped.stderr
    assert stopped.stdout == "c1\n"
    assert "c1" not in names(daemon)
    all_listed = daemon.docker("ps", "-a")
    assert "Exited (137)" in all_listed.stdout

    logs = daemon.docker("logs", "c1")
    assert logs.code == 0, logs.stderr
    assert logs.stdout == "started\n"

    late = daemon.docker("exec", "c1", "echo", "hi")
    assert late.code != 0
    assert "is not running" in late.stderr

    removed = daemon.docker("rm", "c1")
    assert removed.code == 0, removed.stderr
    assert "c1" not in names(daemon, "-a")


def test_run_attached_keeps_container(daemon: DaemonProcess) -> None:
    ran = daemon.docker("run", "--name", "kept", "busybox", "echo", "kept")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "kept\n"
    listed = daemon.docker("ps", "-a", "--filter", "name=kept")
    assert "Exited (0)" in listed.stdout
    assert daemon.docker("rm", "kept").code == 0


def test_kill_then_wait(daemon: DaemonProcess) -> None:
    assert (
        daemon.docker("run", "-d", "--name", "k1", "busybox", "sleep", "1000").code == 0
    )
    killed = daemon.docker("kill", "k1")
    assert killed.code == 0, killed.stderr
    waited = daemon.docker("wait", "k1")
    assert waited.code == 0, waited.stderr
    assert waited.stdout == "137\n"
    again = daemon.docker("kill", "k1")
    assert again.code != 0
    assert "is not running" in again.stderr
    assert daemon.docker("rm", "k1").code == 0


def test_logs_follow_ends_with_run(daemon: DaemonProcess) -> None:
    script = "echo one; sleep 1; echo two >&2"
    started = daemon.docker("run", "-d", "--name", "f1", "busybox", "sh", "-c", script)
    assert started.code == 0, started.stderr
    followed = daemon.docker("logs", "-f", "f1")
    assert followed.code == 0, followed.stderr
    assert followed.stdout == "one\n"
    assert followed.stderr == "two\n"
    tail = daemon.docker("logs", "--tail", "1", "f1")
    assert tail.stdout == ""
    assert tail.stderr == "two\n"
    assert daemon.docker("rm", "f1").code == 0


def test_unknown_container_404(daemon: DaemonProcess) -> None:
    result = daemon.docker("stop", "nosuch")
    assert result.code == 1
    assert "No such container: nosuch" in result.stderr


def test_duplicate_name_409(daemon: DaemonProcess) -> None:
    first = daemon.docker("create", "--name", "dup", "busybox", "true")
    second = daemon.docker("create", "--name", "dup", "busybox", "true")
    assert first.code == 0, first.stderr
    assert second.code != 0
    assert "already in use" in second.stderr
    assert daemon.docker("rm", "dup").code == 0


def test_unknown_runtime_lists_runtimes(daemon: DaemonProcess) -> None:
    result = daemon.docker("run", "--rm", "--runtime", "nosuch", "busybox", "true")
    assert result.code == 125
    assert "unknown runtime 'nosuch'" in result.stderr
    assert "configured runtimes: runc" in result.stderr


def test_unknown_image_says_import(daemon: DaemonProcess) -> None:
    result = daemon.docker("run", "--rm", "no-such-image", "true")
    assert result.code == 125
    assert "docker import" in result.stderr


def test_tty_rejected(daemon: DaemonProcess) -> None:
    result = daemon.docker("run", "--rm", "-t", "busybox", "true")
    assert result.code == 125
    assert "TTY is not supported" in result.stderr


@pytest.mark.parametrize(
    ("flags", "option"),
    [
        (("--cap-drop", "ALL"), "--cap-drop"),
        (("--read-only",), "--read-only"),
        (("-v", "/etc:/hostetc"), "-v/--volume"),
        (("--memory", "10m"), "-m/--memory"),
        (("-p", "8080:80"), "-p/--publish"),
        (("-v", "/data"), "-v/--volume (Volumes)"),
        (("--log-driver", "none"), "--log-driver/--log-opt"),
        (("--health-cmd", "false"), "--health-cmd"),
        (("--cgroupns", "host"), "--cgroupns"),
    ],
)
def test_ignored_options_rejected(
    daemon: DaemonProcess, flags: tuple[str, ...], option: str
) -> None:
    before = names(daemon, "-a")
    result = daemon.docker("run", "--rm", *flags, "busybox", "true")
    assert result.code == 125
    assert option in result.stderr
    assert "not supported by Dockyard" in result.stderr
    assert names(daemon, "-a") == before


def test_import_then_run(daemon: DaemonProcess) -> None:
    from actors.busybox import build_busybox_tar

    tarball = daemon.root / "busybox.tar"
    tarball.write_bytes(build_busybox_tar())
    imported = daemon.docker("import", str(tarball), "mine:1")
    assert imported.code == 0, imported.stderr
    assert imported.stdout.startswith("sha256:")
    images = daemon.docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert "mine:1" in images.stdout.split()
    ran = daemon.docker("run", "--rm", "mine:1", "echo", "imported")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "imported\n"


def test_dockyard_reload(daemon: DaemonProcess) -> None:
    result = daemon.dockyard("reload")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("reloaded: generation ")


def test_sigterm_stops_containers_and_exits_zero() -> None:
    with running_daemon() as daemon:
        started = daemon.docker("run", "-d", "busybox", "sh", "-c", TERMINABLE)
        assert started.code == 0, started.stderr
        assert daemon.terminate() == 0, daemon.log()
        assert _runc_containers(daemon) == []
        mounts = Path("/proc/self/mounts").read_text()
        assert str(daemon.root) not in mounts


def _delete_runc_container(daemon: DaemonProcess, container_id: str) -> None:
    runc = shutil.which("runc")
    assert runc is not None
    state = daemon.root / "exec" / "runc"
    subprocess.run(
        [runc, "--root", str(state), "delete", "--force", container_id], check=True
    )


def _runc_containers(daemon: DaemonProcess) -> list[str]:
    runc = shutil.which("runc")
    assert runc is not None
    state = daemon.root / "exec" / "runc"
    listed = subprocess.run(
        [runc, "--root", str(state), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listed.stdout.split()


@pytest.mark.parametrize(
    "damage", ["none", "exited-state", "empty-state", "mount-only"]
)
def test_sigkilled_daemon_recovers_container(damage: str) -> None:
    # A daemon killed with a container running leaves the container, its
    # mount and its state file. The next daemon deletes the runtime container
    # and unmounts, whatever the state file contains: also when it was written
    # as exited (the running state not yet written), or is unreadable. With
    # only the mount left, as by a daemon killed in a start's first steps,
    # the container is unmounted and stays created.
    with running_daemon() as daemon:
        started = daemon.docker(
            "run", "-d", "--name", "left", "busybox", "sleep", "999"
        )
        assert started.code == 0, started.stderr
        container_id = started.stdout.strip()
        daemon.process.kill()
        daemon.process.wait()
        state_file = daemon.root / "data" / "containers" / container_id / "state.json"
        if damage == "exited-state":
            stored = json.loads(state_file.read_text())
            stored["stored"]["state"]["status"] = "exited"
            state_file.write_text(json.dumps(stored))
        elif damage == "empty-state":
            state_file.write_text("")
        assert _runc_containers(daemon) == [container_id]
        if damage == "mount-only":
            _delete_runc_container(daemon, container_id)
            state_file.unlink()

        daemon.process = start_daemon(daemon.root).process
        assert _runc_containers(daemon) == []
        assert f"{daemon.root}/" not in Path("/proc/self/mounts").read_text()
        listed = daemon.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}")
        assert listed.code == 0, listed.stderr
        expected = "left Created" if damage == "mount-only" else "left Exited (255)"
        assert listed.stdout.startswith(expected), listed.stdout
        removed = daemon.docker("rm", "left")
        assert removed.code == 0, removed.stderr
        assert daemon.terminate() == 0, daemon.log()
        assert list((daemon.root / "data" / "containers").iterdir()) == []


def test_empty_record_of_running_container_keeps_files() -> None:
    # An empty record.json beside a running container is not a create lost
    # to a power loss: the container's files stay, and its record is skipped.
    with running_daemon() as daemon:
        started = daemon.docker("run", "-d", "busybox", "sleep", "999")
        assert started.code == 0, started.stderr
        container_id = started.stdout.strip()
        daemon.process.kill()
        daemon.process.wait()
        directory = daemon.root / "data" / "containers" / container_id
        (directory / "record.json").write_text("")

        daemon.process = start_daemon(daemon.root).process
        assert (directory / "upper").is_dir()
        assert (directory / "rootfs" / "bin" / "sleep").exists()
        assert (daemon.root / "exec" / "containers" / container_id).is_dir()
        assert _runc_containers(daemon) == [container_id]
        listed = daemon.docker("ps", "-a", "-q")
        assert listed.stdout.split() == []
        assert "record.json is unreadable" in daemon.log()


def test_second_daemon_on_same_roots_exits() -> None:
    # Started twice on the same roots, as by running `make run` twice, the
    # second daemon must exit before it touches the first one's containers.
    with running_daemon() as daemon:
        started = daemon.docker(
            "run", "-d", "--name", "kept", "busybox", "sleep", "999"
        )
        assert started.code == 0, started.stderr
        root = daemon.root
        second = subprocess.run(
            [
                str(DOCKYARD),
                "daemon",
                "--config-file",
                str(daemon.config_file),
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--host",
                daemon.host,
            ],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert second.returncode == 1
        assert "in use by another Dockyard daemon" in second.stderr
        assert f"(pid {daemon.process.pid})" in second.stderr
        listed = daemon.docker("ps", "--format", "{{.Names}} {{.Status}}")
        assert listed.stdout.startswith("kept Up"), listed.stdout
        executed = daemon.docker("exec", "kept", "true")
        assert executed.code == 0, executed.stderr
        pid_file = root / "exec" / "dockyard.pid"
        assert pid_file.read_text() == f"{daemon.process.pid}\n"
        assert daemon.terminate() == 0, daemon.log()
