"""Reloads of a real daemon process, seen through the docker CLI.

The real counterpart of the virtual-time race tests: a container started
through a runtime with arguments stays manageable (exec, stop, remove)
after a reload drops the arguments or the whole runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import COMMAND_TIMEOUT, DaemonProcess, running_daemon, start_daemon

pytestmark = [pytest.mark.real, pytest.mark.docker_cli]

RUNTIME = "withargs"
# Seconds `docker stop` waits before SIGKILL; sleep as PID 1 ignores SIGTERM.
STOP_GRACE = "2"
SIGHUP_COUNT = 10


def _runc() -> str:
    runc = shutil.which("runc")
    assert runc is not None
    return runc


def _write(daemon: DaemonProcess, runtimes: dict[str, object]) -> None:
    daemon.config_file.write_text(json.dumps({"runtimes": runtimes}))


def _runtime_with_args() -> dict[str, object]:
    return {RUNTIME: {"path": _runc(), "runtimeArgs": ["--log-format", "text"]}}


def _inspect(daemon: DaemonProcess, name: str) -> dict[str, object]:
    result = daemon.docker("inspect", name)
    assert result.code == 0, result.stderr
    document: list[dict[str, object]] = json.loads(result.stdout)
    return document[0]


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as started:
        yield started
        assert started.terminate() == 0, started.log()


@pytest.mark.parametrize("change", ["args-dropped", "runtime-removed"])
def test_container_survives_reload(daemon: DaemonProcess, change: str) -> None:
    _write(daemon, _runtime_with_args())
    reloaded = daemon.dockyard("reload")
    assert reloaded.code == 0, reloaded.stderr
    started = daemon.docker(
        "run", "-d", "--name", "web", "--runtime", RUNTIME, "busybox", "sleep", "1000"
    )
    assert started.code == 0, started.stderr
    lockin = _inspect(daemon, "web")["Dockyard"]
    assert isinstance(lockin, dict)
    wrapper = str(lockin["RuntimeBinary"])
    assert wrapper.startswith(str(daemon.root / "data" / "runtimes" / f"{RUNTIME}."))

    _write(daemon, {RUNTIME: {"path": _runc()}} if change == "args-dropped" else {})
    reloaded = daemon.dockyard("reload")
    assert reloaded.code == 0, reloaded.stderr
    assert os.path.exists(wrapper)

    executed = daemon.docker("exec", "web", "echo", "still inside")
    assert executed.code == 0, executed.stderr
    assert executed.stdout == "still inside\n"
    stopped = daemon.docker("stop", "-t", STOP_GRACE, "web")
    assert stopped.code == 0, stopped.stderr
    state = _inspect(daemon, "web")["State"]
    assert isinstance(state, dict)
    # Killed after the grace period through the wrapper, not stuck.
    assert state["ExitCode"] == 137
    assert state["Running"] is False
    removed = daemon.docker("rm", "web")
    assert removed.code == 0, removed.stderr
    assert os.path.exists(wrapper)


def test_sighup_storm_ends_on_last_file(daemon: DaemonProcess) -> None:
    events = subprocess.Popen(
        [
            "docker",
            "-H",
            daemon.host,
            "events",
            "--filter",
            "type=daemon",
            "--format",
            "{{json .}}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=daemon.env,
    )
    try:
        # The events stream is open once the CLI has its first response; a
        # reload issued through the API shows it is reading.
        assert daemon.dockyard("reload").code == 0
        assert events.stdout is not None
        first = json.loads(events.stdout.readline())
        assert first["Action"] == "reload"
        for number in range(SIGHUP_COUNT):
            _write(daemon, {f"r{number}": {"path": _runc()}})
            daemon.process.send_signal(signal.SIGHUP)
        last = f"r{SIGHUP_COUNT - 1}:"
        seen = []
        for line in events.stdout:
            attributes = json.loads(line)["Actor"]["Attributes"]
            seen.append(attributes["generation"])
            if last in attributes["runtimes"]:
                break
    finally:
        events.terminate()
        events.wait(timeout=COMMAND_TIMEOUT)
    assert daemon.process.poll() is None
    # Coalesced: far fewer reloads than signals, and the last file won.
    assert 1 <= len(seen) <= SIGHUP_COUNT
    info = daemon.docker("info", "--format", "{{json .Runtimes}}")
    assert info.code == 0, info.stderr
    runtimes = json.loads(info.stdout)
    assert sorted(runtimes) == ["r9", "runc"]


def test_invalid_file_keeps_configuration(daemon: DaemonProcess) -> None:
    _write(daemon, {"kept": {"path": _runc()}})
    assert daemon.dockyard("reload").code == 0
    daemon.config_file.write_text('{"runtimes": {"kept": {"path": 1}}}')
    failed = daemon.dockyard("reload")
    assert failed.code != 0
    assert "runtimes.kept.path: expected a string, got a number" in failed.stderr
    daemon.config_file.write_text('{"runtimes": {')
    failed = daemon.dockyard("reload")
    assert failed.code != 0
    assert "invalid JSON at line 1 column 15" in failed.stderr
    info = daemon.docker("info", "--format", "{{json .Runtimes}}")
    assert sorted(json.loads(info.stdout)) == ["kept", "runc"]
    assert "reload failed, generation" in daemon.log()


def test_flag_and_file_clash_is_reported(daemon: DaemonProcess) -> None:
    daemon.config_file.write_text(json.dumps({"data-root": "/elsewhere"}))
    failed = daemon.dockyard("reload")
    assert failed.code != 0
    assert "data-root (from flag:" in failed.stderr


def test_records_survive_restart() -> None:
    with running_daemon() as daemon:
        # The shutdown SIGKILLs the container (sleep as PID 1 ignores
        # SIGTERM) after this many seconds.
        daemon.config_file.write_text('{"shutdown-timeout": 1}')
        assert daemon.dockyard("reload").code == 0
        started = daemon.docker(
            "run", "-d", "--name", "kept", "busybox", "sleep", "1000"
        )
        assert started.code == 0, started.stderr
        assert daemon.terminate() == 0, daemon.log()
        again = start_daemon(daemon.root)
        try:
            listed = again.docker("ps", "-a", "--format", "{{.Names}} {{.State}}")
            assert listed.stdout.split("\n")[0] == "kept exited"
            restarted = again.docker("start", "kept")
            assert restarted.code == 0, restarted.stderr
            running = again.docker("ps", "--format", "{{.Names}}")
            assert running.stdout == "kept\n"
            removed = again.docker("rm", "-f", "kept")
            assert removed.code == 0, removed.stderr
        finally:
            assert again.terminate() == 0, again.log()


def test_wrappers_collected_at_start() -> None:
    with running_daemon() as daemon:
        _write(daemon, _runtime_with_args())
        assert daemon.dockyard("reload").code == 0
        wrappers = Path(daemon.root / "data" / "runtimes")
        assert len(list(wrappers.iterdir())) == 1
        _write(daemon, {})
        assert daemon.dockyard("reload").code == 0
        # Not removed while the daemon runs, even though nothing uses it now.
        assert len(list(wrappers.iterdir())) == 1
        assert daemon.terminate() == 0, daemon.log()
        again = start_daemon(daemon.root)
        try:
            assert list(wrappers.iterdir()) == []
        finally:
            assert again.terminate() == 0, again.log()
