"""Client for an OCI runtime command line (runc 1.1.5 by default).

The container actors own the calls made through this module. Two rules keep a
running container manageable across reloads:

- Every call runs the locked-in binary recorded for the container. That binary
  may be a daemon-generated wrapper script that execs the real runtime with
  extra global flags and passes our arguments on as "$@". Our arguments
  therefore always start with global flags (`--root` first), and the
  subcommand follows them.
- Every call passes `--root <state_root>`, a per-daemon directory, so that
  Dockyard never lists or changes containers that another runc user owns.

runc runs with `--log-format json`. Where runc's stderr is captured, the
`msg` of its error lines becomes the message of RuntimeFailed. `run`, `create`
and `exec` give runc the container's stdio, so for them runc's own errors are
read back from a `--log` file instead.

Every runc process starts in a new session, so a Ctrl-C in the daemon's
terminal reaches the daemon, which then decides how to shut down, and never
interrupts a runc call halfway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import reaper
from actors.pidfiles import PidFileWatcher
from messages.errors import InvalidRequest, RuntimeFailed

logger = logging.getLogger(__name__)

# Maximum number of characters of runc's output quoted in an error message.
# runc's messages are one line, but a wrapper or a crashing runtime can print
# a whole stack trace, so the end of the output is kept.
MAX_QUOTED_OUTPUT = 2000

# File in the bundle directory to which `runc run` and `runc create` write
# their errors, because their stderr is the container's stderr.
CREATE_LOG_NAME = "runc-create.log"

# How often a start checks for runc's pid file besides the watcher's event:
# a backstop for an event that is lost, for example while the pid file
# directory is being replaced, so it can be long.
PID_FILE_RECHECK_SECONDS = 1.0

# The exit status of sh when the command it execs is not found, so also the
# exit status of a wrapper script whose runtime binary is missing.
SHELL_COMMAND_NOT_FOUND = 127


class RuntimeBinaryMissing(RuntimeFailed):
    """The locked-in runtime binary could not be executed at all."""

    def __init__(self, message: str, binary: str) -> None:
        super().__init__(message)
        self.binary = binary


class RuntimeCommandFailed(RuntimeFailed):
    """A runtime call that exited non-zero, with its exit status and runc's message."""

    def __init__(self, message: str, exit_status: int, runtime_message: str) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.runtime_message = runtime_message


@attrs.frozen
class OciRuntime:
    """An OCI runtime binary together with the per-daemon state directory it uses.

    `binary` is the locked-in path: the runtime itself or a wrapper script.
    `state_root` is passed as runc's `--root` (runc creates it when missing).
    """

    binary: str
    state_root: str
    # Needed by `run` only; the daemon's host passes its watcher.
    pid_files: PidFileWatcher | None = attrs.field(default=None, eq=False)

    async def run(
        self,
        container_id: str,
        bundle: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> ContainerRun:
        """Create and start the container with a foreground `runc run`.

        Returns once the container's process runs, with runc still running:
        runc waits for the container, deletes it when it exits, and exits
        with its exit status. That is one runtime process per run, where
        `create`, `start` and `delete` take three. ContainerRun.wait()
        returns the exit.

        The descriptors are the container's stdio, through runc, which
        copies them in non-terminal mode. With stdin None the container
        reads /dev/null. runc writes its errors to `<bundle>/runc-create.log`,
        and they become the message of RuntimeFailed when the start fails.

        runc writes the container's pid to a file in the directory of
        `pid_files` once the process has started. The start waits for that
        file or for runc's exit, whichever comes first. Cancelled before then, runc is
        killed and waited for, and the caller deletes what it made.
        """
        if self.pid_files is None:
            raise RuntimeError(
                f"OciRuntime for {self.binary} has no pid file watcher, which "
                "`run` needs to see the container start"
            )
        name = f"{container_id}.pid"
        pid_file = self.pid_files.path(name)
        log_file = os.path.join(bundle, CREATE_LOG_NAME)
        for stale in (pid_file, Path(log_file)):
            try:
                stale.unlink(missing_ok=True)
            except OSError as error:
                raise RuntimeFailed(
                    f"cannot remove {stale} before running container "
                    f"{container_id}: {error.strerror or error}. Remove it by hand."
                ) from error
        argv = self._argv(
            "--log",
            log_file,
            "run",
            "--bundle",
            bundle,
            "--pid-file",
            str(pid_file),
            container_id,
        )
        with self.pid_files.expect(name) as written:
            process = await self._spawn(
                "run", container_id, argv, stdin=stdin, stdout=stdout, stderr=stderr
            )
            try:
                await self._wait_started(process, pid_file, name, written)
                pid = self._started_pid(process, pid_file, log_file, container_id)
            except BaseException:
                # NOTE: when runc had started the container, its init outlives
                # the kill. The caller deletes the container, and that init then
                # stays a zombie child of the daemon, because its pid is unknown.
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
                with contextlib.suppress(OSError):
                    pid_file.unlink(missing_ok=True)
                raise

        logger.info("run: container %s, init pid %d", container_id, pid)
        return ContainerRun(
            process=process,
            runtime=self,
            container_id=container_id,
            pid=pid,
            pid_file=pid_file,
            log_file=log_file,
        )

    async def _wait_started(
        self, process: trio.Process, pid_file: Path, name: str, written: trio.Event
    ) -> None:
        """Wait until runc has written the pid file or has exited.

        The watcher's event is the usual wake-up. The file is also checked
        every PID_FILE_RECHECK_SECONDS, so that an event the watcher could
        not deliver costs that long and not a hang.
        """
        assert self.pid_files is not None
        while True:
            with trio.move_on_after(PID_FILE_RECHECK_SECONDS):
                await _first_of(written.wait, process.wait)
            if pid_file.exists() or process.returncode is not None:
                return
            written = self.pid_files.renew(name)

    def _started_pid(
        self, process: trio.Process, pid_file: Path, log_file: str, container_id: str
    ) -> int:
        """Return the pid that runc wrote, or raise why the start failed."""
        if pid_file.exists():
            return _read_pid_file(str(pid_file), self.binary, "run", container_id)
        assert process.returncode is not None
        message = _last_error_in_log(log_file)
        if message is None:
            message = (
                f"runc wrote no pid file and no error to {log_file}, so look "
                "for the runtime's output in the container's stderr"
            )
        raise _command_failed(
            self.binary,
            "run",
            container_id,
            _docker_exit_code(process.returncode),
            message,
        )

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> int:
        """Create the container from `bundle` and return its init process's pid.

        runc runs in detached, non-terminal mode, so the file descriptors given
        as stdin, stdout and stderr become the container process's stdio. With
        stdin None the container reads /dev/null. runc inherits no other
        descriptor, and it exits once the container is created. Afterwards only
        the container has the descriptors open, so once the caller closes its
        copies of the write ends, it reads EOF when the container exits.

        runc also writes its own errors to that stderr. This method reads them
        back from `<bundle>/runc-create.log` (JSON lines) for the message of
        RuntimeFailed.

        Call actors.reaper.become_subreaper() first: the init process is then
        re-parented to the daemon when `runc create` exits, and
        actors.reaper.wait_for_exit(pid) can return its exit code.
        """
        name = "create"
        log_file = os.path.join(bundle, CREATE_LOG_NAME)
        Path(log_file).unlink(missing_ok=True)
        argv = self._argv(
            "--log",
            log_file,
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file,
            container_id,
        )
        stdin_fd = subprocess.DEVNULL if stdin is None else stdin

        try:
            result = await trio.run_process(
                argv,
                stdin=stdin_fd,
                stdout=stdout,
                stderr=stderr,
                check=False,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as error:
            raise self._binary_missing(name, container_id, error) from error

        if result.returncode != 0:
            message = _last_error_in_log(log_file)
            if message is None:
                message = (
                    f"runc wrote no error to {log_file}, so look for the "
                    "runtime's output in the container's stderr"
                )
            raise _command_failed(
                self.binary, name, container_id, result.returncode, message
            )

        pid = _read_pid_file(pid_file, self.binary, name, container_id)
        logger.info("%s: container %s, init pid %d", name, container_id, pid)
        return pid

    async def start(self, container_id: str) -> None:
        """Start the user process of a created container."""
        await self._run("start", container_id, [container_id])

    async def state(self, container_id: str) -> dict[str, Any]:
        """Return the output of `runc state` as parsed JSON.

        Keys in runc 1.1.5 include "id", "pid", "status" ("created", "running",
        "paused" or "stopped"), "bundle" and "created".
        """
        output = await self._run("state", container_id, [container_id])
        text = output.decode(errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError as error:
            raise RuntimeFailed(
                f"OCI runtime {self.binary} state {container_id} printed output "
                f"that is not JSON ({error}): {_quote(text)}"
            ) from error
        if not isinstance(parsed, dict):
            raise RuntimeFailed(
                f"OCI runtime {self.binary} state {container_id} printed a JSON "
                f"{type(parsed).__name__} where an object was expected: "
                f"{_quote(text)}"
            )
        return parsed

    async def kill(
        self, container_id: str, signal: int | str, all_processes: bool = False
    ) -> None:
        """Send a signal to the container's init process.

        `signal` is a number or a name such as "KILL" or "SIGTERM". With
        `all_processes`, runc signals every process in the container.
        """
        args = ["--all"] if all_processes else []
        # int() first, so that a signal.Signals member becomes "9", not a name.
        signal_arg = str(int(signal)) if isinstance(signal, int) else signal
        await self._run("kill", container_id, [*args, container_id, signal_arg])

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Delete a stopped container's runtime state and cgroup.

        With `force`, runc first kills a container that is still running.
        """
        args = ["--force"] if force else []
        await self._run("delete", container_id, [*args, container_id])

    async def exec(
        self,
        container_id: str,
        process_json_path: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
        pid_file: str,
        log_file: str | None = None,
    ) -> ExecProcess:
        """Start `runc exec` in the foreground and return it while it runs.

        `process_json_path` is an OCI process spec (JSON). runc runs the process
        inside the container, copies between the given descriptors and the
        process's stdio, forwards the signals it receives to the process, and
        exits with the process's exit status. With stdin None the process reads
        /dev/null.

        The caller reads the output from its ends of the descriptors while the
        process runs, and calls ExecProcess.wait() for the exit code.
        Cancellation is up to the caller: sending SIGTERM or SIGKILL to
        ExecProcess.process reaches the exec'd process through runc's signal
        forwarding.

        runc writes its own errors to `log_file`, by default `pid_file` with
        ".log" appended. Both files are removed first, so that a pid file after
        exit means the process did start.
        """
        if log_file is None:
            log_file = pid_file + ".log"
        Path(pid_file).unlink(missing_ok=True)
        Path(log_file).unlink(missing_ok=True)
        argv = self._argv(
            "--log",
            log_file,
            "exec",
            "--process",
            process_json_path,
            "--pid-file",
            pid_file,
            container_id,
        )
        process = await self._spawn(
            "exec", container_id, argv, stdin=stdin, stdout=stdout, stderr=stderr
        )
        logger.info(
            "started exec in container %s with %s, runc pid %d",
            container_id,
            process_json_path,
            process.pid,
        )
        return ExecProcess(
            process=process,
            runtime=self,
            container_id=container_id,
            pid_file=pid_file,
            log_file=log_file,
        )

    async def _spawn(
        self,
        subcommand: str,
        container_id: str,
        argv: list[str],
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
    ) -> trio.Process:
        """Start runc with the given stdio (stdin None reads /dev/null)."""
        try:
            return await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as error:
            raise self._binary_missing(subcommand, container_id, error) from error

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.state_root, "--log-format", "json", *args]

    async def _run(self, subcommand: str, container_id: str, args: list[str]) -> bytes:
        """Run one subcommand with stdout and stderr captured and return stdout."""
        argv = self._argv(subcommand, *args)
        try:
            result = await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as error:
            raise self._binary_missing(subcommand, container_id, error) from error

        if result.returncode != 0:
            message = _error_messages(result.stderr)
            raise _command_failed(
                self.binary, subcommand, container_id, result.returncode, message
            )
        return result.stdout

    def _binary_missing(
        self, subcommand: str, container_id: str, error: OSError
    ) -> RuntimeBinaryMissing:
        logger.error(
            "cannot execute OCI runtime %s for %s %s: %s",
            self.binary,
            subcommand,
            container_id,
            error,
        )
        return RuntimeBinaryMissing(
            f"OCI runtime binary {self.binary} is missing or not executable "
            f"({error.strerror}), so {subcommand} on container {container_id} "
            "failed. A container is locked in to the runtime binary it was "
            "started with, so that binary must not be removed while the "
            f"container exists: restore {self.binary} to manage the container.",
            binary=self.binary,
        )


@attrs.frozen
class RunExit:
    """The end of a foreground run.

    `code` is docker-style: the exit status, or 128 + the signal number.
    `runtime_deleted` is true when the runtime deleted the container
    itself. When it is false, the caller deletes the container through the
    locked-in binary.
    """

    code: int
    runtime_deleted: bool


@attrs.frozen(eq=False)
class ContainerRun:
    """A container's foreground `runc run`, from its start to its exit."""

    process: trio.Process
    runtime: OciRuntime
    container_id: str
    pid: int
    pid_file: Path
    log_file: str

    async def wait(self) -> RunExit:
        """Wait for runc to exit and return how the container ended.

        runc exits with the container's status after deleting it. When runc
        was killed by a signal, or logged an error, the container may still
        exist (its init is then this daemon's child, as a subreaper), so
        `runtime_deleted` is false.
        """
        returncode = await self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        if returncode < 0:
            logger.error(
                "runc run for container %s was killed by signal %d; the "
                "container is deleted through %s",
                self.container_id,
                -returncode,
                self.runtime.binary,
            )
            return RunExit(code=_docker_exit_code(returncode), runtime_deleted=False)
        error = _last_error_in_log(self.log_file)
        if error is not None:
            logger.warning(
                "runc run for container %s exited with %d and logged: %s",
                self.container_id,
                returncode,
                error,
            )
        return RunExit(code=returncode, runtime_deleted=error is None)

    @property
    def runtime_pid(self) -> int:
        """The pid of the `runc run` process that waits for the container."""
        return self.process.pid

    async def reap_orphan(self) -> None:
        """Wait for the init of a container whose runc was killed, and reap it.

        Such an init is the daemon's child, as its subreaper, once runc is
        gone, and it would stay a zombie after it exits. Returns at once when
        it is not the daemon's child.
        """
        try:
            code = await reaper.wait_for_exit(self.pid)
        except reaper.ExitStatusUnavailable as error:
            logger.info("container %s: %s", self.container_id, error)
            return
        logger.info(
            "reaped init %d of container %s, which outlived its runc, code %d",
            self.pid,
            self.container_id,
            code,
        )


@attrs.frozen(eq=False)
class ExecProcess:
    """A `runc exec` running in the foreground for one exec'd process.

    `process` is runc's trio Process. Its stdio are the descriptors that the
    caller passed, so its `stdout` and `stderr` attributes are None.
    """

    process: trio.Process
    runtime: OciRuntime
    container_id: str
    pid_file: str
    log_file: str

    async def wait(self) -> int:
        """Wait for runc to exit and return the exec'd process's exit code.

        The code is docker-style: the exit status, or 128 + the signal number
        for a process killed by a signal. Raises RuntimeFailed when runc failed
        before the process started (no pid file was written), with runc's
        error from the log file.
        """
        returncode = await self.process.wait()
        if not os.path.exists(self.pid_file):
            message = _last_error_in_log(self.log_file)
            if message is None:
                message = f"runc wrote no pid file and no error to {self.log_file}"
            raise _command_failed(
                self.runtime.binary,
                "exec",
                self.container_id,
                _docker_exit_code(returncode),
                message,
            )

        # NOTE: if runc itself is killed (SIGKILL cannot be forwarded), this
        # returns runc's death as the code while the exec'd process may still
        # be running inside the container.
        return _docker_exit_code(returncode)

    def read_pid(self) -> int:
        """Return the exec'd process's host pid from the pid file runc wrote."""
        return _read_pid_file(
            self.pid_file, self.runtime.binary, "exec", self.container_id
        )


def preflight(runtime_name: str, binary: str, wrapped_path: str | None) -> None:
    """Raise InvalidRequest unless a container can be started with this runtime.

    `binary` is the path that will be locked in. When it is a wrapper script,
    `wrapped_path` is the runtime binary the wrapper execs, and it is checked
    too. Each must exist, be a regular file (after following symlinks) and be
    executable. A name without a slash is looked up on PATH, as exec does.

    The check is a few stat calls, so it is synchronous.
    """
    if wrapped_path is None:
        _check_executable(runtime_name, binary, _fix_runtime_path(runtime_name))
        return

    _check_executable(
        runtime_name,
        binary,
        "The daemon generated this wrapper script from daemon.json, and its "
        "wrapper scripts must not be removed while it runs. Restart the daemon "
        "so that it writes the wrapper again.",
    )
    _check_executable(runtime_name, wrapped_path, _fix_runtime_path(runtime_name))


def _fix_runtime_path(runtime_name: str) -> str:
    return (
        f"Install it or fix `runtimes.{runtime_name}.path` in daemon.json, "
        "then reload the daemon configuration."
    )


def _check_executable(runtime_name: str, path: str, fix: str) -> None:
    prefix = f"OCI runtime {runtime_name!r}: {path}"
    resolved = path if os.sep in path else shutil.which(path)
    if resolved is None:
        raise InvalidRequest(f"{prefix} was not found on PATH. {fix}")

    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError as error:
        raise InvalidRequest(f"{prefix} does not exist. {fix}") from error
    except OSError as error:
        raise InvalidRequest(
            f"{prefix} cannot be read ({error.strerror}). {fix}"
        ) from error

    if stat.S_ISDIR(mode):
        raise InvalidRequest(f"{prefix} is a directory, not an executable file. {fix}")
    if not stat.S_ISREG(mode):
        raise InvalidRequest(f"{prefix} is not a regular file. {fix}")
    if not os.access(resolved, os.X_OK):
        raise InvalidRequest(
            f"{prefix} is not executable (mode {stat.S_IMODE(mode):04o}). "
            f"Run `chmod +x {resolved}`, or: {fix}"
        )


def _command_failed(
    binary: str, subcommand: str, container_id: str, exit_status: int, message: str
) -> RuntimeCommandFailed:
    text = (
        f"OCI runtime {binary} {subcommand} {container_id} failed "
        f"with exit status {exit_status}: {message}"
    )
    if exit_status == SHELL_COMMAND_NOT_FOUND:
        text += (
            f" (exit status {SHELL_COMMAND_NOT_FOUND} from a wrapper script "
            "means that the runtime binary it execs is missing)"
        )
    logger.warning("%s", text)
    return RuntimeCommandFailed(text, exit_status, message)


def _read_pid_file(path: str, binary: str, subcommand: str, container_id: str) -> int:
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
        return int(text.strip())
    except (OSError, ValueError) as error:
        raise RuntimeFailed(
            f"OCI runtime {binary} {subcommand} {container_id} succeeded but its "
            f"pid file {path} cannot be read as a pid: {error}"
        ) from error


def _error_messages(output: bytes) -> str:
    """Return the `msg` of runc's JSON error lines, or the trimmed raw output.

    Raw output remains when the output is not runc's JSON log, for example a
    shell error from a wrapper script.
    """
    messages: list[str] = []
    for line in output.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", "")))
    if messages:
        return _quote("; ".join(messages))
    return _quote(output.decode(errors="replace"))


def _last_error_in_log(log_file: str) -> str | None:
    """Return the `msg` of the last error line in a runc JSON log, if any."""
    try:
        with open(log_file, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return None

    last: str | None = None
    for line in content.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            last = str(entry.get("msg", ""))
    return None if last is None else _quote(last)


def _quote(output: str) -> str:
    text = output.strip()
    if not text:
        return "(no output)"
    if len(text) > MAX_QUOTED_OUTPUT:
        return "..." + text[-MAX_QUOTED_OUTPUT:]
    return text


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of `waits` returns, cancelling the others."""
    async with trio.open_nursery() as nursery:

        async def wait_then_cancel(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(wait_then_cancel, wait)


def _docker_exit_code(returncode: int) -> int:
    """Map a Popen return code (negative for a signal death) to docker's form."""
    if returncode < 0:
        return 128 - returncode
    return returncode
