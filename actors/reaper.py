"""The daemon as parent of orphaned container init processes, and waiting for
their exit.

`runc create` forks the container's init process and exits, which leaves the
init orphaned, and so does a foreground `runc run` that is killed. Linux
re-parents an orphan to its nearest ancestor that is a child subreaper, so
once the daemon has called become_subreaper(), those init processes are its
children. Only a parent can
read a child's exit status, and a child's pid cannot be reused before its
parent waits for it, so wait_for_exit(pid) on such a child is free of pid
reuse races.

NOTE: orphans that are not container inits (for example the process of an
exec whose runc was killed) also become the daemon's children, and they stay
zombies until someone waits for them. A catch-all waitpid(-1) would steal
exit statuses from trio's own subprocess handling, so nothing here reaps them.
"""

from __future__ import annotations

import ctypes
import logging
import os

import trio

logger = logging.getLogger(__name__)

# From <linux/prctl.h>.
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

# Offset that docker adds to a signal number to report a signal death as an
# exit code, as shells do: SIGKILL gives 137.
SIGNAL_EXIT_OFFSET = 128


class ExitStatusUnavailable(Exception):
    """A process whose exit status this daemon cannot read.

    Raised at once when the pid does not exist, because the process has exited
    and someone already waited for it. Raised after the process exits when it
    was not the daemon's child, for example a container init that an earlier
    daemon process started. In both cases the process is no longer running.
    """

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"exit status of pid {pid} is unavailable: {reason}")
        self.pid = pid
        self.reason = reason


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Make the calling process a child subreaper. Calling it again is harmless.

    Raises OSError with the errno of prctl(2) on failure.
    """
    prctl = _libc().prctl
    prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")
    logger.debug("pid %d is now a child subreaper", os.getpid())


def is_subreaper() -> bool:
    """Return whether the calling process is a child subreaper."""
    prctl = _libc().prctl
    prctl.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    prctl.restype = ctypes.c_int
    flag = ctypes.c_int(0)
    if prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_GET_CHILD_SUBREAPER): {os.strerror(errno)}")
    return flag.value != 0


async def wait_for_exit(pid: int) -> int:
    """Wait until the child process `pid` exits, reap it and return its exit code.

    The code is docker-style: the exit status, or 128 + the signal number for
    a process killed by a signal. Raises ExitStatusUnavailable when the
    process cannot be waited for: see that class. Only one task may wait for
    a given pid, because the first wait reaps it and a second one raises.

    Cancellation is safe: the process is left unreaped, so a later call can
    still wait for it.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError as error:
        raise ExitStatusUnavailable(
            pid, "no such process (it has exited and was already reaped)"
        ) from error

    try:
        # A pidfd becomes readable when the process exits.
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)

    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError as error:
        raise ExitStatusUnavailable(
            pid,
            "it has exited, but it is not a child of this daemon, "
            "or another waiter reaped it first",
        ) from error

    exit_code = _docker_exit_code(status)
    logger.debug("pid %d exited with code %d", pid, exit_code)
    return exit_code


def _docker_exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return SIGNAL_EXIT_OFFSET + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
