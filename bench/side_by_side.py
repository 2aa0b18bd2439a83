"""Side by side: Dockyard against raw runc and dockerd, on the same workloads.

    python -m bench.side_by_side [--rounds 30]

Two workloads, each timed from the request to its end:

- run: run a container of the busybox image to completion, `true`
  (create, start, wait for the exit, remove);
- exec: exec `true` into a running container.

Four contenders:

- runc: `runc run` of a prepared bundle (the container is removed when it
  exits) and `runc exec`, the floor that every daemon adds to;
- dockyard-api: Dockyard in this process, through the embedding API;
- dockyard-cli: a `dockyard daemon` process, through the docker CLI
  (`docker run --rm`, `docker exec`);
- dockerd: dockerd from Debian's docker.io package (`make bench-peers`),
  started here on its own data root with the vfs storage driver and no
  bridge, through the same docker CLI.

`--contender dockyard-api-tmpfs` adds a fifth: a second in-process daemon
whose data root, with its records, images and overlay directories, is
under `--state-dir` too, a tmpfs by default. Beside dockyard-api in the
same run, it shows how much the file system under the data root costs.

All contenders are set up first. Then each round runs both workloads once
on every contender, in a random order drawn anew each round from `--seed`.
So each contender runs after each other one about equally often, and drift
of the machine spreads over all of them. Warm-up rounds are not counted.
Each sample starts after an untimed pause, `--pause-ms` (50 by default).
Back to back, a sample inherits the kernel state of the one before it.
runc's cgroup write skips its wait for an RCU grace period when another
process's wait ended just before. Raw runc reaches that write soonest
after the previous sample, so it gains most. A contender that cannot start
is reported with the reason, and the others still run. Ctrl-C stops the
daemons and deletes the containers and files, and so does the end of a run
where dockerd was killed.

The in-process daemon is set up first, because it makes this process a
child subreaper: the raw runc container's init then becomes a child of
this process, which waits for it at the end. dockerd runs under `tini -s`
when tini is installed (docker.io depends on it), so that the containerd
shims it orphans are reaped by tini and not left as zombie children of
this process. dockerd 20.10 also writes /etc/docker/key.json and creates
/run/docker/plugins, whatever its data and exec roots are; everything
else it writes is under the temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from actors.busybox import BUSYBOX_CHANGES, build_busybox_tar
from actors.daemon import Daemon, open_daemon
from actors.reaper import ExitStatusUnavailable, wait_for_exit
from bench.reload_cost import percentile
from bench.results import markdown_table, write_results
from bench.stress import chunks, clean_up
from messages.config import DaemonFlags
from messages.errors import DockyardError
from messages.execspec import ExecOptions
from messages.requests import CreateContainer

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DOCKYARD = ROOT / ".venv" / "bin" / "dockyard"
WORKLOADS = ("run", "exec")
DEFAULT_CONTENDERS = ("runc", "dockyard-api", "dockyard-cli", "dockerd")
# Opt-in: dockyard-api with every file of its daemon under --state-dir,
# which shows what the file system under the data root costs.
CONTENDERS = (*DEFAULT_CONTENDERS, "dockyard-api-tmpfs")
RUN_COMMAND = ("true",)
EXEC_COMMAND = ("true",)
SLEEP_COMMAND = ("sleep", "100000")
SLEEPER = "side-by-side-sleeper"
# dockerd runs with --bridge=none, so its containers need --network none.
# Dockyard's containers get only a loopback interface anyway, and the same
# options keep both CLI command lines identical.
RUN_OPTIONS = ("--network", "none")
# Hang guards, not measurements: one workload takes well under a second,
# and a daemon is up within a few seconds.
COMMAND_TIMEOUT_SECONDS = 60.0
DAEMON_START_TIMEOUT_SECONDS = 60.0
DAEMON_STOP_TIMEOUT_SECONDS = 60.0
# Interval between attempts to reach dockerd's socket while it starts.
SOCKET_POLL_SECONDS = 0.2
LISTENING = "API listening on unix://"
# The lines of a daemon's log quoted when it fails to start.
LOG_TAIL_LINES = 15
# Runtime state goes where a host keeps it: /run, a tmpfs on most hosts.
# /dev/shm is a tmpfs that every Linux host has.
DEFAULT_STATE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Untimed wait before each sample. Back to back, a sample inherits kernel
# state from the one before it, and raw runc gains most from that.
DEFAULT_PAUSE_MS = 50
# A minute is far longer than any kernel state lasts, so more is a typo.
MAX_PAUSE_MS = 60_000
# Exit status after Ctrl-C, as shells report SIGINT.
INTERRUPTED_STATUS = 130


class Unavailable(Exception):
    """A contender that cannot run on this machine, with the reason as message."""


@attrs.frozen
class Roots:
    """The directories of one contender: its files and its runtime state.

    `state` contains runc's `--root` and the daemons' exec roots, which a
    host keeps under /run, a tmpfs on most Linux hosts. `files` contains the
    rest.
    """

    files: Path
    state: Path

    def part(self, name: str) -> Roots:
        return Roots(files=self.files / name, state=self.state / name)


async def command(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run `argv` to its end and return its stdout.

    Raises RuntimeError with the command and its stderr on a non-zero exit.
    """
    with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
        completed = await trio.run_process(
            list(argv),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(
            f"`{' '.join(argv)}` exited with {completed.returncode}: {stderr}"
        )
    return completed.stdout.decode(errors="replace")


def docker_cli_env(root: Path) -> dict[str, str]:
    """Return an environment in which the docker CLI reads none of the host's setup."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_API_VERSION")
    }
    env["DOCKER_CONFIG"] = str(root / "docker-config")
    return env


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


async def checkout_version() -> str:
    """Return "checkout <commit>" for this checkout, read with `git rev-parse`."""
    try:
        commit = await command(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    except (RuntimeError, OSError):
        return "checkout of unknown commit"
    return f"checkout {commit.strip()}"


class Contender(Protocol):
    name: str
    version: str

    async def run_to_completion(self) -> None: ...

    async def exec_into(self) -> None: ...


@attrs.define
class RawRunc:
    """runc with a bundle on a plain directory: no daemon, no overlay mount."""

    roots: Roots
    runc: str
    name: str = "runc"
    version: str = ""
    runs: int = 0

    @property
    def root(self) -> Path:
        return self.roots.files

    @property
    def state(self) -> str:
        return str(self.roots.state / "state")

    async def set_up(self, stack: contextlib.AsyncExitStack) -> None:
        self.version = (await command([self.runc, "--version"])).splitlines()[0]
        rootfs = self.root / "rootfs"
        tar = await trio.to_thread.run_sync(build_busybox_tar)
        await trio.to_thread.run_sync(_extract, tar, rootfs)
        for bundle, args in (("run", RUN_COMMAND), ("sleep", SLEEP_COMMAND)):
            directory = self.root / bundle
            directory.mkdir(parents=True)
            await command([self.runc, "spec", "--bundle", str(directory)])
            config_file = directory / "config.json"
            spec = json.loads(config_file.read_text())
            spec["process"]["terminal"] = False
            spec["process"]["args"] = list(args)
            spec["root"] = {"path": str(rootfs), "readonly": True}
            config_file.write_text(json.dumps(spec))
        stack.push_async_callback(self.stop_sleeper)
        argv = [
            self.runc,
            "--root",
            self.state,
            "run",
            "--detach",
            "--pid-file",
            str(self.pid_file),
            "--bundle",
            str(self.root / "sleep"),
            SLEEPER,
        ]
        # The container keeps runc's stdout and stderr open, so they must not
        # be pipes that this process waits to see closed.
        with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
            await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    @property
    def pid_file(self) -> Path:
        return self.root / "sleeper.pid"

    async def stop_sleeper(self) -> None:
        if not self.pid_file.exists():
            return
        with trio.CancelScope(shield=True):
            await command([self.runc, "--root", self.state, "kill", SLEEPER, "KILL"])
            # Once the in-process daemon has started, this process is a
            # child subreaper, so the sleeper's init is its child and must
            # be waited for, or it stays a zombie.
            with (
                trio.move_on_after(DAEMON_STOP_TIMEOUT_SECONDS),
                contextlib.suppress(ExitStatusUnavailable),
            ):
                await wait_for_exit(int(self.pid_file.read_text()))
            await command([self.runc, "--root", self.state, "delete", "-f", SLEEPER])

    async def run_to_completion(self) -> None:
        self.runs += 1
        await command(
            [
                self.runc,
                "--root",
                self.state,
                "run",
                "--bundle",
                str(self.root / "run"),
                f"side-by-side-run-{self.runs}",
            ]
        )

    async def exec_into(self) -> None:
        await command([self.runc, "--root", self.state, "exec", SLEEPER, *EXEC_COMMAND])


def _extract(tar: bytes, target: Path) -> None:
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        # The tarball is the one build_busybox_tar just made.
        archive.extractall(target, filter="fully_trusted")


@attrs.define
class DockyardApi:
    """Dockyard in this process, driven through the embedding API."""

    roots: Roots
    name: str = "dockyard-api"
    version: str = ""
    daemon: Daemon | None = None
    sleeper: str = ""

    async def set_up(self, stack: contextlib.AsyncExitStack) -> None:
        self.version = await checkout_version()
        flags = DaemonFlags(
            data_root=str(self.roots.files / "data"),
            exec_root=str(self.roots.state / "exec"),
        )
        daemon = await stack.enter_async_context(open_daemon(flags=flags))
        self.daemon = daemon
        tar = await trio.to_thread.run_sync(build_busybox_tar)
        await daemon.import_image(
            chunks(tar), reference="busybox", changes=BUSYBOX_CHANGES
        )
        record = await daemon.create_container(
            CreateContainer(image="busybox", name=SLEEPER, cmd=SLEEP_COMMAND)
        )
        await daemon.start_container(record.id)
        self.sleeper = record.id

        async def remove_sleeper() -> None:
            with trio.CancelScope(shield=True):
                try:
                    await daemon.remove_container(record.id, force=True)
                except DockyardError as error:
                    logger.error("removing %s's sleeper failed: %s", self.name, error)

        stack.push_async_callback(remove_sleeper)

    async def run_to_completion(self) -> None:
        assert self.daemon is not None
        record = await self.daemon.create_container(
            CreateContainer(image="busybox", cmd=RUN_COMMAND)
        )
        await self.daemon.start_container(record.id)
        code = await self.daemon.wait_container(record.id)
        await self.daemon.remove_container(record.id)
        if code != 0:
            raise RuntimeError(f"the container exited with {code}")

    async def exec_into(self) -> None:
        assert self.daemon is not None
        result = await self.daemon.exec(self.sleeper, ExecOptions(cmd=EXEC_COMMAND))
        if result.exit_code != 0:
            raise RuntimeError(f"the exec exited with {result.exit_code}")


@attrs.define
class DockerCli:
    """A daemon process on its own socket, driven through the docker CLI."""

    name: str
    root: Path
    socket: Path
    docker: str
    run_options: tuple[str, ...] = ()
    version: str = ""

    @property
    def env(self) -> dict[str, str]:
        return docker_cli_env(self.root)

    async def docker_command(self, *args: str, stdin: bytes | None = None) -> str:
        return await command(
            [self.docker, "-H", f"unix://{self.socket}", *args],
            env=self.env,
            stdin=stdin,
        )

    async def start_sleeper(self, stack: contextlib.AsyncExitStack) -> None:
        await self.docker_command(
            "run", "-d", *self.run_options, "--name", SLEEPER, "busybox", *SLEEP_COMMAND
        )

        async def remove_sleeper() -> None:
            # A failure is logged, so that a daemon that died mid-run does
            # not cost the report of the samples taken.
            with trio.CancelScope(shield=True):
                try:
                    await self.docker_command("rm", "-f", SLEEPER)
                except RuntimeError as error:
                    logger.error("removing %s's sleeper failed: %s", self.name, error)

        stack.push_async_callback(remove_sleeper)

    async def run_to_completion(self) -> None:
        await self.docker_command(
            "run", "--rm", *self.run_options, "busybox", *RUN_COMMAND
        )

    async def exec_into(self) -> None:
        await self.docker_command("exec", SLEEPER, *EXEC_COMMAND)


async def stop_process(process: trio.Process, name: str) -> None:
    """Send SIGTERM and wait for the exit, with SIGKILL after the stop timeout."""
    with trio.CancelScope(shield=True):
        if process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(DAEMON_STOP_TIMEOUT_SECONDS):
            await process.wait()
            return
        logger.error(
            "%s did not stop within %s s; killing it", name, DAEMON_STOP_TIMEOUT_SECONDS
        )
        process.kill()
        await process.wait()


async def start_dockyard_cli(
    roots: Roots, docker: str, stack: contextlib.AsyncExitStack, nursery: trio.Nursery
) -> DockerCli:
    """Start a `dockyard daemon` process on `roots`, as tests/daemon_process.py does."""
    root = roots.files
    config_file = root / "daemon.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text("{}")
    socket = root / "d.sock"

    directories = [
        "--config-file",
        str(config_file),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(roots.state / "exec"),
    ]
    await command([str(DOCKYARD), "import-busybox", *directories])

    log_path = root / "daemon.log"
    argv = [str(DOCKYARD), "daemon", *directories, "--host", f"unix://{socket}"]
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C in a terminal then reaches only this
        # process, which stops the daemon after its clean-up used it.
        process = await trio.lowlevel.open_process(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.push_async_callback(stop_process, process, "dockyard daemon")

    assert process.stdout is not None
    output = b""
    with trio.move_on_after(DAEMON_START_TIMEOUT_SECONDS):
        while LISTENING.encode() not in output:
            chunk = await process.stdout.receive_some()
            if not chunk:
                break
            output += chunk
    if LISTENING.encode() not in output:
        raise Unavailable(
            f"`{' '.join(argv)}` did not start listening:\n{log_tail(log_path)}"
        )
    nursery.start_soon(_drain, process.stdout)

    contender = DockerCli(
        name="dockyard-cli",
        root=root,
        socket=socket,
        docker=docker,
        run_options=RUN_OPTIONS,
    )
    contender.version = await checkout_version()
    await contender.start_sleeper(stack)
    return contender


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        while await stream.receive_some():
            pass


def dockerd_argv(roots: Roots) -> list[str]:
    """Return dockerd's command line: everything under `roots`, no networking."""
    root = roots.files
    return [
        "dockerd",
        "--config-file",
        str(root / "daemon.json"),
        "--data-root",
        str(root / "docker"),
        "--exec-root",
        str(roots.state / "docker-exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "-H",
        f"unix://{root / 'docker.sock'}",
        "--iptables=false",
        "--bridge=none",
        "--storage-driver=vfs",
    ]


async def start_dockerd(
    roots: Roots, docker: str, stack: contextlib.AsyncExitStack
) -> DockerCli:
    """Start dockerd on `roots`, wait for its socket and import busybox into it."""
    root = roots.files
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise Unavailable("dockerd is not on PATH; install it with `make bench-peers`")

    root.mkdir(parents=True, exist_ok=True)
    # An empty daemon.json of its own, so that /etc/docker/daemon.json is not read.
    (root / "daemon.json").write_text("{}")
    argv = dockerd_argv(roots)
    argv[0] = dockerd

    # dockerd's containerd leaves its shims orphaned. This process is a child
    # subreaper for the in-process daemon, so it would adopt them and leave
    # them as zombies. Under `tini -s`, tini adopts and reaps them instead.
    tini = shutil.which("tini")
    launched = [tini, "-s", "--", *argv] if tini is not None else argv
    log_path = root / "dockerd.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            launched,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.push_async_callback(stop_dockerd, process, roots)

    contender = DockerCli(
        name="dockerd",
        root=root,
        socket=root / "docker.sock",
        docker=docker,
        run_options=RUN_OPTIONS,
    )
    with trio.move_on_after(DAEMON_START_TIMEOUT_SECONDS):
        while True:
            if process.returncode is not None:
                break
            with contextlib.suppress(RuntimeError):
                contender.version = (
                    await contender.docker_command(
                        "version", "--format", "{{.Server.Version}}"
                    )
                ).strip()
                break
            await trio.sleep(SOCKET_POLL_SECONDS)

    if not contender.version:
        if process.returncode is None:
            reason = (
                f"did not respond on its socket within "
                f"{DAEMON_START_TIMEOUT_SECONDS:.0f} s"
            )
        else:
            reason = f"exited with status {process.returncode}"
        raise Unavailable(
            f"`{' '.join(launched)}` {reason}. The end of its log:\n"
            f"{log_tail(log_path)}"
        )

    tar = await trio.to_thread.run_sync(build_busybox_tar)
    changes = [part for change in BUSYBOX_CHANGES for part in ("--change", change)]
    await contender.docker_command("import", *changes, "-", "busybox", stdin=tar)
    await contender.start_sleeper(stack)
    return contender


async def stop_dockerd(process: trio.Process, roots: Roots) -> None:
    """Stop dockerd, then make sure the containerd it started has exited too."""
    await stop_process(process, "dockerd")
    # dockerd 20.10 writes the pid of the containerd it manages here.
    pid_file = roots.state / "docker-exec" / "containerd" / "containerd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if str(roots.state).encode() in cmdline:
            logger.error("containerd %d outlived dockerd; stopping it", pid)
            os.kill(pid, signal.SIGTERM)


@attrs.define
class Samples:
    """Seconds by (contender, workload), and the errors that stopped a sample."""

    seconds: dict[tuple[str, str], list[float]] = attrs.field(factory=dict)
    # The counted round of each sample, by the same keys.
    rounds: dict[tuple[str, str], list[int]] = attrs.field(factory=dict)
    errors: list[str] = attrs.field(factory=list)

    def add(
        self, contender: str, workload: str, value: float, round_index: int
    ) -> None:
        self.seconds.setdefault((contender, workload), []).append(value)
        self.rounds.setdefault((contender, workload), []).append(round_index)

    def paired_ratios(
        self, workload: str, numerator: str, denominator: str
    ) -> list[float]:
        """Return the ratio of two contenders' samples in each round both have."""
        by_round = dict(
            zip(
                self.rounds.get((denominator, workload), []),
                self.seconds.get((denominator, workload), []),
                strict=True,
            )
        )
        return [
            value / by_round[round_index]
            for round_index, value in zip(
                self.rounds.get((numerator, workload), []),
                self.seconds.get((numerator, workload), []),
                strict=True,
            )
            if round_index in by_round
        ]


async def time_workload(
    samples: Samples, contender: Contender, workload: str, round_index: int | None
) -> None:
    """Time one sample, and keep it when `round_index` (of the counted rounds)
    is set."""
    operation: Callable[[], Awaitable[None]] = (
        contender.run_to_completion if workload == "run" else contender.exec_into
    )
    began = time.perf_counter()
    try:
        with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
            await operation()
    except Exception as error:
        samples.errors.append(f"{contender.name} {workload}: {error}")
        logger.error("%s %s failed: %s", contender.name, workload, error)
        return
    if round_index is not None:
        samples.add(contender.name, workload, time.perf_counter() - began, round_index)


@attrs.define
class Outcome:
    samples: Samples
    versions: dict[str, str]
    unavailable: dict[str, str]


async def side_by_side(
    roots: Roots,
    rounds: int,
    warmup: int,
    selected: Sequence[str],
    seed: int,
    pause: float = DEFAULT_PAUSE_MS / 1000,
) -> Outcome:
    """Set up the selected contenders under `roots` and run the rounds,
    with `pause` seconds before each sample."""
    contenders: list[Contender] = []
    unavailable: dict[str, str] = {}
    samples = Samples()
    # The exit stack stops the daemons before the nursery waits for its
    # tasks, which read the output of those daemons until they exit.
    async with trio.open_nursery() as nursery:
        async with contextlib.AsyncExitStack() as stack:
            await _set_up(roots, selected, stack, nursery, contenders, unavailable)
            await _run_rounds(contenders, samples, rounds, warmup, seed, pause)
        nursery.cancel_scope.cancel()
    versions = {contender.name: contender.version for contender in contenders}
    return Outcome(samples=samples, versions=versions, unavailable=unavailable)


async def _set_up(
    roots: Roots,
    selected: Sequence[str],
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    contenders: list[Contender],
    unavailable: dict[str, str],
) -> None:
    """Set up each selected contender in turn, and record why any could not."""
    docker = shutil.which("docker")
    runc = shutil.which("runc")
    if runc is None:
        raise SystemExit("runc is not on PATH; install it with `apt-get install runc`")
    for name in selected:
        try:
            if name == "dockyard-api":
                api = DockyardApi(roots.part("api"))
                await api.set_up(stack)
                contenders.append(api)
            elif name == "dockyard-api-tmpfs":
                # Its data root too goes under the state directory.
                state = roots.state / "api-tmpfs"
                api = DockyardApi(Roots(files=state, state=state), name=name)
                await api.set_up(stack)
                contenders.append(api)
            elif name == "runc":
                raw = RawRunc(roots.part("runc"), runc)
                await raw.set_up(stack)
                contenders.append(raw)
            elif docker is None:
                raise Unavailable("the docker CLI is not on PATH")
            elif name == "dockyard-cli":
                contenders.append(
                    await start_dockyard_cli(roots.part("cli"), docker, stack, nursery)
                )
            elif name == "dockerd":
                contenders.append(
                    await start_dockerd(roots.part("dockerd"), docker, stack)
                )
        except (
            Unavailable,
            RuntimeError,
            OSError,
            DockyardError,
            subprocess.SubprocessError,
        ) as error:
            unavailable[name] = str(error)
            print(f"{name} is unavailable: {error}", file=sys.stderr, flush=True)


async def _run_rounds(
    contenders: Sequence[Contender],
    samples: Samples,
    rounds: int,
    warmup: int,
    seed: int,
    pause: float,
) -> None:
    # A new random order each round. With a fixed rotation, each contender
    # would nearly always run right after the same one, and dockerd's work
    # that goes on after its command returns would slow only that one.
    order = random.Random(seed)
    for index in range(warmup + rounds):
        counted = index >= warmup
        for contender in order.sample(list(contenders), len(contenders)):
            for workload in WORKLOADS:
                await trio.sleep(pause)
                await time_workload(
                    samples, contender, workload, index - warmup if counted else None
                )
        if counted and (index - warmup + 1) % 10 == 0:
            print(f"round {index - warmup + 1} of {rounds}", flush=True)


def _order(selected: Sequence[str]) -> list[str]:
    """Put the in-process daemons first, so that this process is a child
    subreaper before the raw runc sleeper starts (see the module docstring)."""
    return sorted(selected, key=lambda name: not name.startswith("dockyard-api"))


RATIOS = (
    ("dockyard-api", "runc"),
    ("dockyard-api-tmpfs", "runc"),
    ("dockyard-cli", "runc"),
    ("dockerd", "runc"),
    ("dockerd", "dockyard-cli"),
)


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Return count, median, p95 and min in ms, and the medians of the first
    and last third of the rounds, which show drift over the run."""
    third = max(1, len(values) // 3)
    return {
        "count": len(values),
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
        "first_third_median_ms": round(statistics.median(values[:third]) * 1000, 2),
        "last_third_median_ms": round(statistics.median(values[-third:]) * 1000, 2),
    }


StatsByWorkload = dict[str, dict[str, dict[str, float]]]


def _report(outcome: Outcome, rounds: int) -> tuple[dict[str, Any], str]:
    """Return the result document and the Markdown text of the rounds."""
    seconds = outcome.samples.seconds
    stats: StatsByWorkload = {}
    for workload in WORKLOADS:
        for contender in CONTENDERS:
            values = seconds.get((contender, workload))
            if values:
                stats.setdefault(workload, {})[contender] = _stats(values)
    ratios = _ratios(stats, outcome.samples)

    text = _stats_table(stats) + "\n" + _ratio_table(ratios)
    if outcome.versions:
        listed = ", ".join(
            f"{name}: {version}" for name, version in outcome.versions.items()
        )
        text += f"\nVersions: {listed}.\n"
    for name, reason in outcome.unavailable.items():
        text += f"\n{name} could not run: {reason}\n"
    if outcome.samples.errors:
        text += f"\n{len(outcome.samples.errors)} operations failed; see the JSON.\n"

    document = {
        "rounds": rounds,
        "versions": outcome.versions,
        "unavailable": outcome.unavailable,
        "errors": outcome.samples.errors,
        "stats": stats,
        "ratios": ratios,
        "dockerd_command": " ".join(
            dockerd_argv(Roots(files=Path("T"), state=Path("S")))
        ),
        "seconds": {
            f"{contender}:{workload}": [round(value, 5) for value in values]
            for (contender, workload), values in seconds.items()
        },
    }
    return document, text


def _ratios(stats: StatsByWorkload, samples: Samples) -> StatsByWorkload:
    """Return the RATIOS by workload, where both contenders have samples.

    Each comes as the median of the ratios within each round, the ratio of
    the medians and the ratio of the p95s. The first pairs samples taken
    seconds apart, so it cancels the drift of the machine's speed over the
    minutes of a run. The others pool samples taken under whatever load
    each moment had, and a contender that runs just after dockerd's
    clean-up moves them more.
    """
    ratios: StatsByWorkload = {}
    for workload, by_contender in stats.items():
        for numerator, denominator in RATIOS:
            if numerator not in by_contender or denominator not in by_contender:
                continue
            top, bottom = by_contender[numerator], by_contender[denominator]
            paired = samples.paired_ratios(workload, numerator, denominator)
            if not paired:
                # Each failed in every round where the other had a sample.
                continue
            ratios.setdefault(workload, {})[f"{numerator}/{denominator}"] = {
                "paired_median": round(statistics.median(paired), 3),
                "median": round(top["median_ms"] / bottom["median_ms"], 3),
                "p95": round(top["p95_ms"] / bottom["p95_ms"], 3),
            }
    return ratios


def _stats_table(stats: StatsByWorkload) -> str:
    rows = [
        (
            workload,
            contender,
            found["count"],
            f"{found['median_ms']:.1f}",
            f"{found['p95_ms']:.1f}",
            f"{found['min_ms']:.1f}",
            f"{found['first_third_median_ms']:.1f}",
            f"{found['last_third_median_ms']:.1f}",
        )
        for workload, by_contender in stats.items()
        for contender, found in by_contender.items()
    ]
    header = (
        "workload",
        "contender",
        "samples",
        "median (ms)",
        "p95 (ms)",
        "min (ms)",
        "median, first third of the rounds (ms)",
        "median, last third (ms)",
    )
    return markdown_table(header, rows)


def _ratio_table(ratios: StatsByWorkload) -> str:
    rows = [
        (
            workload,
            key,
            f"{ratio['paired_median']:.2f}",
            f"{ratio['median']:.2f}",
            f"{ratio['p95']:.2f}",
        )
        for workload, by_key in ratios.items()
        for key, ratio in by_key.items()
    ]
    header = ("workload", "ratio", "median within rounds", "of medians", "of p95s")
    return markdown_table(header, rows)


def clean_up_all(roots: Roots) -> None:
    """Delete what a failed run left: runc containers of each part, mounts, files."""
    runc = shutil.which("runc")
    raw_state = roots.state / "runc" / "state"
    if runc is not None and raw_state.is_dir():
        subprocess.run(
            [runc, "--root", str(raw_state), "delete", "-f", SLEEPER],
            capture_output=True,
            check=False,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    if runc is not None:
        _delete_dockerd_containers(runc, roots.state / "dockerd")
    _kill_shims(roots.state / "dockerd")
    for part in ("api", "api-tmpfs", "cli"):
        # Runtime state first: clean_up deletes the runc containers it lists
        # there, and then the mounts under the files.
        for directory in (roots.state / part, roots.files / part):
            if directory.exists():
                clean_up(directory)
    clean_up(roots.state)
    clean_up(roots.files)


def _delete_dockerd_containers(runc: str, state: Path) -> None:
    """Delete the runc containers that a killed dockerd left. Blocking."""
    # dockerd 20.10 keeps runc's state under <exec-root>/runtime-runc/moby.
    for state_file in state.glob("docker-exec/runtime-runc/*/*/state.json"):
        container = state_file.parent
        logger.error("deleting container %s, which dockerd left", container.name)
        subprocess.run(
            [runc, "--root", str(container.parent), "delete", "-f", container.name],
            capture_output=True,
            check=False,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )


def _kill_shims(state: Path) -> None:
    """Kill the containerd shims of a killed dockerd, found by the socket
    path on their command line. Blocking."""
    marker = str(state).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"containerd-shim" in argv[0] and any(marker in part for part in argv):
            logger.error("killing containerd shim %s, which dockerd left", entry.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.side_by_side",
        description="Time running a container to completion and exec into a "
        "running one, for raw runc, Dockyard (embedding API and docker CLI) "
        "and dockerd, in alternating rounds.",
    )
    parser.add_argument(
        "--rounds", type=int, default=30, help="counted rounds; default 30"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="rounds run first and not counted; default 2",
    )
    parser.add_argument(
        "--contender",
        choices=CONTENDERS,
        action="append",
        help="contender to run (repeatable); default: all but dockyard-api-tmpfs",
    )
    parser.add_argument(
        "--tmp-dir",
        default=None,
        help="parent of the temporary directory; default: the system's",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the random order of the contenders in each round; default 1",
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="parent of the runtime state (runc --root, exec roots); default: "
        f"{DEFAULT_STATE_DIR or 'the system temporary directory'}",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="level of the in-process daemon's log lines; default WARNING",
    )
    parser.add_argument(
        "--pause-ms",
        type=int,
        default=DEFAULT_PAUSE_MS,
        help="untimed wait before each sample, in milliseconds; 0 runs the "
        f"samples back to back; default {DEFAULT_PAUSE_MS}",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results only"
    )
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1 or arguments.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup 0 or more")
    for option, directory in (
        ("--tmp-dir", arguments.tmp_dir),
        ("--state-dir", arguments.state_dir),
    ):
        if directory is not None and not os.path.isdir(directory):
            parser.error(f"{option} {directory} is not a directory; make it first")
    if not 0 <= arguments.pause_ms <= MAX_PAUSE_MS:
        parser.error(
            f"--pause-ms must be from 0 to {MAX_PAUSE_MS}, not {arguments.pause_ms}"
        )
    return arguments


def _workspace(parent: str | None) -> Path:
    """Make a temporary directory under `parent` and return its absolute path."""
    return Path(tempfile.mkdtemp(prefix="dysbs-", dir=parent)).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    logging.basicConfig(level=arguments.log_level.upper())
    # A contender named twice runs once.
    selected = _order(list(dict.fromkeys(arguments.contender or DEFAULT_CONTENDERS)))
    # Short paths, because a Unix socket path is limited to 107 bytes. They
    # are absolute, as runc reads the rootfs path relative to the bundle.
    roots = Roots(
        files=_workspace(arguments.tmp_dir),
        state=_workspace(arguments.state_dir),
    )
    outcome = None
    try:
        outcome = trio.run(
            side_by_side,
            roots,
            arguments.rounds,
            arguments.warmup,
            selected,
            arguments.seed,
            arguments.pause_ms / 1000,
        )
    except* KeyboardInterrupt:
        print("interrupted; the daemons, containers and files are removed")
    finally:
        try:
            clean_up_all(roots)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"cleanup of {roots} failed: {error}", file=sys.stderr)
    if outcome is None:
        return INTERRUPTED_STATUS
    document, text = _report(outcome, arguments.rounds)
    document["seed"] = arguments.seed
    document["pause_ms"] = arguments.pause_ms
    document["state_dir"] = str(roots.state.parent)
    document["files_dir"] = str(roots.files.parent)
    text += (
        f"\nRuntime state under {roots.state.parent}, other files under "
        f"{roots.files.parent}. Pause before each sample: {arguments.pause_ms} ms.\n"
    )
    print(text)
    if not arguments.no_write:
        for path in write_results("side_by_side", document, text):
            print(f"wrote {path}")
    return 1 if outcome.samples.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
