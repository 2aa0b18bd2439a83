"""The host: everything a container actor needs from the operating system.

`LinuxHost` does it for real: runc through `OciRuntime`, overlay mounts,
and the watcher of the pid files that `runc run` writes. The daemon is
also a child subreaper, so that a container whose runc dies is still its
child. Race tests
pass a fake host instead, whose runtime checks at every call that the
binary it was invoked through exists; that is the only reason this seam
exists.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from actors import reaper, rootfs
from actors.pidfiles import PidFileWatcher
from actors.runtime import OciRuntime, RunExit, preflight
from messages.execspec import ALL_CAPABILITIES, bounding_capabilities

logger = logging.getLogger(__name__)

# Present and "Y" when the kernel has AppArmor enabled.
APPARMOR_ENABLED_FILE = Path("/sys/module/apparmor/parameters/enabled")


class ExecHandle(Protocol):
    async def wait(self) -> int: ...


class RunHandle(Protocol):
    """A started container whose runtime process waits for it to exit."""

    @property
    def pid(self) -> int: ...

    @property
    def runtime_pid(self) -> int: ...

    async def wait(self) -> RunExit: ...

    async def reap_orphan(self) -> None: ...


class RuntimeClient(Protocol):
    """The OCI runtime calls Dockyard makes, all through one locked-in binary."""

    @property
    def binary(self) -> str: ...

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> int: ...

    async def run(
        self,
        container_id: str,
        bundle: str,
        *,
        stdout: int,
        stderr: int,
        stdin: int | None = None,
    ) -> RunHandle: ...

    async def start(self, container_id: str) -> None: ...

    async def state(self, container_id: str) -> dict[str, Any]: ...

    async def kill(
        self, container_id: str, signal: int | str, all_processes: bool = False
    ) -> None: ...

    async def delete(self, container_id: str, force: bool = False) -> None: ...

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
    ) -> ExecHandle: ...


class Host(Protocol):
    apparmor_enabled: bool
    # The capabilities a privileged container gets: a process cannot grant
    # capabilities outside its own bounding set.
    privileged_capabilities: tuple[str, ...]

    def runtime(self, binary: str) -> RuntimeClient: ...

    def preflight(
        self, runtime_name: str, binary: str, wrapped: str | None
    ) -> None: ...

    def mount_rootfs(self, image_rootfs: Path, container_dir: Path) -> Path:
        """Mount the container's root filesystem. Blocking, for a worker thread."""

    def unmount_rootfs(self, container_dir: Path) -> None:
        """Unmount it if it is mounted. Blocking, for a worker thread."""

    def mounted_rootfs(self, container_dirs: Sequence[Path]) -> set[Path]:
        """Return those of `container_dirs` whose root filesystem is mounted."""

    def runtime_state_exists(self, container_id: str) -> bool:
        """Return whether the runtime has state for a container of that id."""

    @property
    def runtime_state_root(self) -> Path:
        """The directory every runtime keeps its containers' state in."""

    async def run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the host's own tasks in the daemon's nursery until cancelled."""


def rootfs_path(container_dir: Path) -> Path:
    return container_dir / "rootfs"


class LinuxHost:
    """The real host: runc with its state under `state_root`, overlayfs, and
    runc's pid files under `pid_directory`."""

    def __init__(self, state_root: Path, pid_directory: Path) -> None:
        self.state_root = state_root
        self.pid_files = PidFileWatcher(pid_directory)
        self.apparmor_enabled = _apparmor_enabled()
        self.privileged_capabilities = _own_bounding_set()
        reaper.become_subreaper()

    def runtime(self, binary: str) -> RuntimeClient:
        return OciRuntime(
            binary=binary, state_root=str(self.state_root), pid_files=self.pid_files
        )

    def preflight(self, runtime_name: str, binary: str, wrapped: str | None) -> None:
        preflight(runtime_name, binary, wrapped)

    def mount_rootfs(self, image_rootfs: Path, container_dir: Path) -> Path:
        target = rootfs_path(container_dir)
        upper, work = container_dir / "upper", container_dir / "work"
        # A target made just now cannot be a mount point, which spares
        # reading the whole mount table.
        fresh = not target.exists()
        for directory in (upper, work, target):
            directory.mkdir(parents=True, exist_ok=True)
        if fresh or not rootfs.is_mounted(target):
            rootfs.mount_overlay(image_rootfs, upper, work, target)
        return target

    def unmount_rootfs(self, container_dir: Path) -> None:
        rootfs.unmount(rootfs_path(container_dir))

    def mounted_rootfs(self, container_dirs: Sequence[Path]) -> set[Path]:
        points = rootfs.mount_points()
        return {
            directory
            for directory in container_dirs
            if os.fsencode(os.path.realpath(rootfs_path(directory))) in points
        }

    def runtime_state_exists(self, container_id: str) -> bool:
        # Every runtime call passes `--root state_root`, and runc keeps a
        # container's state in a directory of its id there.
        return (self.state_root / container_id).is_dir()

    @property
    def runtime_state_root(self) -> Path:
        return self.state_root

    async def run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.pid_files.run(task_status=task_status)


def _own_bounding_set() -> tuple[str, ...]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return bounding_capabilities(line.removeprefix("CapBnd:"))
    return ALL_CAPABILITIES


def _apparmor_enabled() -> bool:
    try:
        return APPARMOR_ENABLED_FILE.read_text().strip() == "Y"
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a directory tree that may be absent; blocking."""
    shutil.rmtree(path, ignore_errors=not path.exists())
    if os.path.lexists(path):
        logger.warning("could not remove %s completely", path)
