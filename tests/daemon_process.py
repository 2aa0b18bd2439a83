"""A real `dockyard daemon` process for end-to-end tests, and its docker CLI.

Each daemon runs on its own data root, exec root and socket in a temporary
directory, with the busybox image imported before it starts. The docker CLI
gets its own DOCKER_CONFIG, so nothing of the host's docker setup is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import require_real

ROOT = Path(__file__).resolve().parents[1]
DOCKYARD = ROOT / ".venv" / "bin" / "dockyard"
# Upper bounds that keep a hung CLI call or daemon from hanging the suite.
# They are hang guards, not measurements: every call normally ends far sooner.
COMMAND_TIMEOUT = 120
SHUTDOWN_TIMEOUT = 60
LISTENING = "API listening on unix://"


@attrs.define
class DaemonProcess:
    root: Path
    process: subprocess.Popen[str]
    env: dict[str, str]

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'd.sock'}"

    def docker(self, *args: str, stdin: bytes | None = None) -> Result:
        docker = shutil.which("docker")
        assert docker is not None
        return self._run([docker, "-H", self.host, *args], stdin)

    def dockyard(self, *args: str) -> Result:
        """Run a `dockyard` subcommand against this daemon's socket."""
        return self._run([str(DOCKYARD), *args, "--host", self.host], None)

    @property
    def config_file(self) -> Path:
        return self.root / "daemon.json"

    def _run(self, argv: list[str], stdin: bytes | None) -> Result:
        completed = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            env=self.env,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return Result(
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def terminate(self) -> int:
        """Send SIGTERM and return the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=SHUTDOWN_TIMEOUT)


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str


def start_daemon(root: Path) -> DaemonProcess:
    """Start a daemon on `root`, keeping its daemon.json and data if present."""
    config = root / "daemon.json"
    if not config.exists():
        config.write_text("{}")
    dirs = [
        "--config-file",
        str(config),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
    ]
    subprocess.run(
        [str(DOCKYARD), "import-busybox", *dirs],
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_API_VERSION")
    }
    env["DOCKER_CONFIG"] = str(root / "docker-config")
    with (root / "daemon.log").open("a") as log:
        process = subprocess.Popen(
            [str(DOCKYARD), "daemon", *dirs, "--host", f"unix://{root / 'd.sock'}"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    daemon = DaemonProcess(root, process, env)

    assert process.stdout is not None
    for line in process.stdout:
        if LISTENING in line:
            return daemon
    process.wait(timeout=SHUTDOWN_TIMEOUT)
    pytest.fail(f"the daemon exited with {process.returncode}:\n{daemon.log()}")


def clean_up(root: Path, daemon: DaemonProcess | None) -> None:
    """Stop what a failed test left running: the daemon, runc containers, mounts."""
    if daemon is not None and daemon.process.poll() is None:
        daemon.process.kill()
        daemon.process.wait(timeout=SHUTDOWN_TIMEOUT)
    runc = shutil.which("runc")
    state = root / "exec" / "runc"
    if runc is not None and state.is_dir():
        listed = subprocess.run(
            [runc, "--root", str(state), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        for container_id in listed.stdout.split():
            subprocess.run(
                [runc, "--root", str(state), "delete", "--force", container_id],
                check=False,
            )
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for target in sorted((line.split()[1] for line in mounts), reverse=True):
        if target.startswith(f"{root}/"):
            subprocess.run(["umount", "--lazy", target], check=False)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_daemon() -> Iterator[DaemonProcess]:
    require_real(docker_cli=True)
    # A short path, because a Unix socket path is limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="dye2e-"))
    daemon = None
    try:
        daemon = start_daemon(root)
        yield daemon
    finally:
        clean_up(root, daemon)
