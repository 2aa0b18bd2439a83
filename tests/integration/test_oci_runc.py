"""Run specs from container_spec and exec_process with the real runc.

Each test builds a busybox root file system in its tmp_path and keeps runc's
state under tmp_path too, so it touches no container it did not create.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from messages import oci
from messages.execspec import (
    ALL_CAPABILITIES,
    DEFAULT_APPARMOR_PROFILE,
    DEFAULT_CAPABILITIES,
    DEFAULT_RLIMITS,
    ExecContainer,
    ExecOptions,
    bounding_capabilities,
    exec_process,
    select_apparmor_profile,
)
from messages.spec import MASKED_PATHS, container_spec
from messages.users import ResolvedUser, resolve_user

pytestmark = pytest.mark.real

BUSYBOX = Path("/usr/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "ip", "id", "cat", "sleep", "pwd", "grep")
CONTAINER_ENV = ("PATH=/bin",)

PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n"


def fail_or_skip(missing: list[str]) -> None:
    """Fail under CI=true, else skip, when a requirement in `missing` is absent."""
    if not missing:
        return
    message = "needs " + ", ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_runc() -> str:
    """Return the runc path, or fail or skip if runc cannot run containers."""
    runc = shutil.which("runc")
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if runc is None:
        missing.append("runc on PATH")
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    fail_or_skip(missing)
    assert runc is not None
    return runc


def status_field(status: str, field: str) -> str:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    raise AssertionError(f"{field} missing from /proc/<pid>/status: {status!r}")


def own_capability_field(field: str) -> str:
    return status_field(Path("/proc/self/status").read_text(), field)


def capability_mask(names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << ALL_CAPABILITIES.index(name)
    return mask


def host_all_capabilities() -> tuple[str, ...]:
    """Return the capabilities runc, started from here, can grant a process."""
    return bounding_capabilities(own_capability_field("CapBnd"))


def own_privileged_mask() -> int:
    """Return the test's bounding set, limited to the capabilities Dockyard names."""
    return int(own_capability_field("CapBnd"), 16) & capability_mask(ALL_CAPABILITIES)


def ulimit_text(limit: int) -> str:
    """Format a limit as busybox sh's `ulimit` prints it."""
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def own_nofile_limits() -> list[str]:
    """Return the test's soft and hard RLIMIT_NOFILE as busybox sh prints them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [ulimit_text(soft), ulimit_text(hard)]


def host_apparmor_profile() -> str:
    """Select the profile a default container gets on this host.

    Dockyard does not load docker-default into the kernel. On a host with
    AppArmor but without that profile, the test requests unconfined instead.
    """
    enabled = Path("/sys/module/apparmor/parameters/enabled")
    has_apparmor = enabled.is_file() and enabled.read_text().strip() == "Y"
    custom = None
    loaded = Path("/sys/kernel/security/apparmor/profiles")
    if has_apparmor and (
        not loaded.is_file() or DEFAULT_APPARMOR_PROFILE not in loaded.read_text()
    ):
        custom = "unconfined"
    return select_apparmor_profile(custom, False, has_apparmor)


class Runc:
    """runc with its own state root and bundle under a test's tmp_path."""

    def __init__(self, binary: str, tmp_path: Path) -> None:
        self.binary = binary
        self.state = tmp_path / "state"
        self.bundle = tmp_path / "bundle"
        self.rootfs = self.bundle / "rootfs"
        self.ids: list[str] = []
        self._build_rootfs()

    def _build_rootfs(self) -> None:
        bin_dir = self.rootfs / "bin"
        bin_dir.mkdir(parents=True)
        shutil.copy2(BUSYBOX, bin_dir / "busybox")
        for applet in BUSYBOX_APPLETS:
            (bin_dir / applet).symlink_to("busybox")
        (self.rootfs / "tmp").mkdir()
        etc = self.rootfs / "etc"
        etc.mkdir()
        (etc / "passwd").write_text(PASSWD)
        (etc / "group").write_text(GROUP)

    def resolve(self, user: str) -> ResolvedUser:
        etc = self.rootfs / "etc"
        return resolve_user(
            user, (etc / "passwd").read_text(), (etc / "group").read_text()
        )

    def write_spec(
        self,
        args: tuple[str, ...],
        *,
        user: ResolvedUser,
        privileged: bool = False,
        rlimits: tuple[oci.Rlimit, ...] = DEFAULT_RLIMITS,
    ) -> None:
        spec = container_spec(
            rootfs=str(self.rootfs),
            hostname="dockyard-test",
            args=args,
            env=CONTAINER_ENV,
            cwd="/",
            user=user,
            privileged=privileged,
            apparmor_profile=host_apparmor_profile(),
            capabilities=DEFAULT_CAPABILITIES,
            rlimits=rlimits,
            all_capabilities=host_all_capabilities(),
        )
        (self.bundle / "config.json").write_bytes(oci.spec_to_json(spec))

    def new_id(self) -> str:
        container_id = f"dockyard-test-{uuid.uuid4().hex[:12]}"
        self.ids.append(container_id)
        return container_id

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run one runc command and capture its output."""
        command = [self.binary, "--root", str(self.state), *map(str, args)]
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def create_and_start(self) -> str:
        """Create and start a container from the written spec, and return its id."""
        container_id = self.new_id()
        pid_file = self.bundle / "container.pid"
        command = [self.binary, "--root", str(self.state), "create"]
        command += ["--bundle", str(self.bundle), "--pid-file", str(pid_file)]
        # The container's stdio is the stdio of `runc create`. A pipe would stay
        # open as long as the container runs, so stdout and stderr go to files.
        with (self.bundle / "create.log").open("w+") as log:
            created = subprocess.run(
                [*command, container_id],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=False,
            )
            log.seek(0)
            assert created.returncode == 0, log.read()
        pid = int(pid_file.read_text())
        assert Path(f"/proc/{pid}").exists()

        started = self.run("start", container_id)
        assert started.returncode == 0, started.stderr
        return container_id

    def exec(
        self, container_id: str, process: oci.Process
    ) -> subprocess.CompletedProcess[str]:
        process_file = self.bundle / "proc.json"
        process_file.write_bytes(oci.process_to_json(process))
        return self.run("exec", "--process", process_file, container_id)

    def kill_and_delete(self, container_id: str) -> None:
        killed = self.run("kill", container_id, "KILL")
        assert killed.returncode == 0, killed.stderr
        deleted = self.run("delete", "--force", container_id)
        assert deleted.returncode == 0, deleted.stderr

    def delete_all(self) -> None:
        for container_id in self.ids:
            self.run("delete", "--force", container_id)


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    client = Runc(require_runc(), tmp_path)
    try:
        yield client
    finally:
        client.delete_all()


def run_container(
    runc: Runc, args: tuple[str, ...], *, user: str = "", privileged: bool = False
) -> subprocess.CompletedProcess[str]:
    runc.write_spec(args, user=runc.resolve(user), privileged=privileged)
    return runc.run("run", "--bundle", runc.bundle, runc.new_id())


@pytest.mark.parametrize("user", ["", "0", "alice", "1000", "4242:4343"])
def test_run_as_user(runc: Runc, user: str) -> None:
    result = run_container(runc, ("id", "-u"), user=user)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(runc.resolve(user).uid)


def test_run_supplementary_groups(runc: Runc) -> None:
    result = run_container(runc, ("id", "-G"), user="alice")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "50"]


def test_run_only_loopback_up(runc: Runc) -> None:
    result = run_container(runc, ("ip", "-o", "link"))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    name = lines[0].split(":")[1].strip()
    flags = lines[0].split("<", 1)[1].split(">", 1)[0].split(",")
    assert name == "lo"
    assert "UP" in flags


def test_run_exit_code_propagates(runc: Runc) -> None:
    result = run_container(runc, ("sh", "-c", "exit 7"))

    assert result.returncode == 7


def test_run_default_capabilities(runc: Runc) -> None:
    result = run_container(runc, ("cat", "/proc/self/status"))

    assert result.returncode == 0, result.stderr
    expected = capability_mask(DEFAULT_CAPABILITIES)
    assert int(status_field(result.stdout, "CapEff"), 16) == expected
    assert int(status_field(result.stdout, "CapBnd"), 16) == expected
    assert int(status_field(result.stdout, "CapInh"), 16) == 0


def test_run_privileged_capabilities(runc: Runc) -> None:
    result = run_container(runc, ("cat", "/proc/self/status"), privileged=True)

    assert result.returncode == 0, result.stderr
    expected = own_privileged_mask()
    assert int(status_field(result.stdout, "CapEff"), 16) == expected
    assert int(status_field(result.stdout, "CapBnd"), 16) == expected


def test_run_default_nofile_limit(runc: Runc) -> None:
    # DEFAULT_RLIMITS is empty, so the container inherits the test's limits.
    result = run_container(runc, ("sh", "-c", "ulimit -n; ulimit -Hn"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == own_nofile_limits()


def test_run_explicit_nofile_limit(runc: Runc) -> None:
    # Lowering a limit needs no capability, so runc can apply these anywhere.
    _, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(own_hard, 1024)
    soft = hard // 2
    runc.write_spec(
        ("sh", "-c", "ulimit -n; ulimit -Hn"),
        user=runc.resolve(""),
        rlimits=(oci.Rlimit(type="RLIMIT_NOFILE", hard=hard, soft=soft),),
    )

    result = runc.run("run", "--bundle", runc.bundle, runc.new_id())

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(soft), str(hard)]


def test_run_masks_paths(runc: Runc) -> None:
    masked_files = [path for path in MASKED_PATHS if Path(path).is_file()]
    if not masked_files:
        pytest.skip(f"none of {MASKED_PATHS} is a file on this host")

    result = run_container(runc, ("cat", masked_files[0]))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_run_readonly_proc_sys(runc: Runc) -> None:
    result = run_container(runc, ("grep", " /proc/sys ", "/proc/self/mounts"))

    assert result.returncode == 0, result.stderr
    options = result.stdout.split()[3].split(",")
    assert "ro" in options


def exec_record() -> ExecContainer:
    """Return the record of a container started by write_spec with defaults."""
    return ExecContainer(
        env=CONTAINER_ENV,
        working_dir="/",
        privileged=False,
        apparmor_profile=host_apparmor_profile(),
        capabilities=DEFAULT_CAPABILITIES,
        all_capabilities=host_all_capabilities(),
    )


def test_exec_in_running_container(runc: Runc) -> None:
    runc.write_spec(("sleep", "1000"), user=runc.resolve(""))
    container_id = runc.create_and_start()
    options = ExecOptions(
        cmd=("sh", "-c", 'echo "$GREETING"; id -u; pwd; exit 3'),
        env=("GREETING=hello",),
        working_dir="/tmp",
        user="alice",
    )
    process = exec_process(
        container=exec_record(), options=options, user=runc.resolve(options.user)
    )

    executed = runc.exec(container_id, process)

    assert executed.returncode == 3, executed.stderr
    assert executed.stdout.splitlines() == ["hello", "1000", "/tmp"]
    runc.kill_and_delete(container_id)
    assert runc.run("state", container_id).returncode != 0


def test_exec_default_capabilities(runc: Runc) -> None:
    runc.write_spec(("sleep", "1000"), user=runc.resolve(""))
    container_id = runc.create_and_start()
    options = ExecOptions(cmd=("cat", "/proc/self/status"))
    process = exec_process(
        container=exec_record(), options=options, user=runc.resolve("")
    )

    executed = runc.exec(container_id, process)

    assert executed.returncode == 0, executed.stderr
    expected = capability_mask(DEFAULT_CAPABILITIES)
    assert int(status_field(executed.stdout, "CapEff"), 16) == expected
    runc.kill_and_delete(container_id)


def test_exec_privileged_capabilities(runc: Runc) -> None:
    runc.write_spec(("sleep", "1000"), user=runc.resolve(""))
    container_id = runc.create_and_start()
    options = ExecOptions(cmd=("cat", "/proc/self/status"), privileged=True)
    process = exec_process(
        container=exec_record(), options=options, user=runc.resolve("")
    )

    executed = runc.exec(container_id, process)

    assert executed.returncode == 0, executed.stderr
    expected = own_privileged_mask()
    assert int(status_field(executed.stdout, "CapEff"), 16) == expected
    assert int(status_field(executed.stdout, "CapBnd"), 16) == expected
    runc.kill_and_delete(container_id)


def test_exec_default_nofile_limit(runc: Runc) -> None:
    runc.write_spec(("sleep", "1000"), user=runc.resolve(""))
    container_id = runc.create_and_start()
    options = ExecOptions(cmd=("sh", "-c", "ulimit -n; ulimit -Hn"))
    process = exec_process(
        container=exec_record(), options=options, user=runc.resolve("")
    )

    executed = runc.exec(container_id, process)

    assert executed.returncode == 0, executed.stderr
    assert executed.stdout.split() == own_nofile_limits()
    runc.kill_and_delete(container_id)
