"""The config.json of a container, with dockerd's defaults for Linux.

container_spec builds a complete spec that runc runs without a terminal. The
container gets new pid, network, ipc, uts and mount namespaces. Its network
namespace has only the loopback interface, which runc brings up. Dockyard
writes no network configuration files (/etc/hosts, /etc/resolv.conf,
/etc/hostname) into the container.

A privileged container differs as in dockerd: it gets every capability of
`all_capabilities`, which defaults to ALL_CAPABILITIES, and access to every
device. /sys and /sys/fs/cgroup are mounted read-write, and no path is masked
or made read-only.

NOTE: no seccomp profile is set, so the system calls that dockerd's default
profile blocks are allowed. Host devices are not created in a privileged
container's /dev, only permitted by the device cgroup.
"""

from __future__ import annotations

from messages import oci
from messages.errors import InvalidRequest
from messages.execspec import (
    ALL_CAPABILITIES,
    DEFAULT_RLIMITS,
    capability_sets,
    check_working_dir,
)
from messages.users import ResolvedUser

NAMESPACE_TYPES: tuple[str, ...] = ("pid", "network", "ipc", "uts", "mount")

# Sizes of the tmpfs on /dev and /dev/shm. 64 MiB for /dev/shm is dockerd's
# default --shm-size.
DEV_TMPFS_SIZE = "65536k"
SHM_SIZE = "65536k"

# gid of the "tty" group that owns /dev/pts entries in Debian-like images.
TTY_GID = 5

# Paths that dockerd hides from a container that is not privileged, as
# `docker inspect` lists them in HostConfig.MaskedPaths. runc mounts /dev/null
# over a file and an empty read-only tmpfs over a directory.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

# Paths that dockerd bind-mounts read-only in a container that is not
# privileged.
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Device cgroup rules. A container that is not privileged may use no device
# except those runc appends to every container's rules, among them null, zero,
# full, random, urandom, tty, ptmx and the pts devices.
DEVICE_RULES: tuple[oci.DeviceCgroup, ...] = (
    oci.DeviceCgroup(allow=False, access="rwm"),
)
PRIVILEGED_DEVICE_RULES: tuple[oci.DeviceCgroup, ...] = (
    oci.DeviceCgroup(allow=True, access="rwm"),
)


def standard_mounts(*, privileged: bool) -> tuple[oci.Mount, ...]:
    """Return the kernel file systems every container gets, as dockerd mounts them."""
    sys_mode = "rw" if privileged else "ro"
    return (
        oci.Mount(
            destination="/proc",
            type="proc",
            source="proc",
            options=("rw", "nosuid", "noexec", "nodev"),
        ),
        oci.Mount(
            destination="/dev",
            type="tmpfs",
            source="tmpfs",
            options=(
                "rw",
                "nosuid",
                "strictatime",
                "mode=755",
                f"size={DEV_TMPFS_SIZE}",
            ),
        ),
        oci.Mount(
            destination="/dev/pts",
            type="devpts",
            source="devpts",
            options=(
                "rw",
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                f"gid={TTY_GID}",
            ),
        ),
        oci.Mount(
            destination="/sys",
            type="sysfs",
            source="sysfs",
            options=(sys_mode, "nosuid", "noexec", "nodev"),
        ),
        oci.Mount(
            destination="/sys/fs/cgroup",
            type="cgroup",
            source="cgroup",
            options=(sys_mode, "nosuid", "noexec", "nodev"),
        ),
        oci.Mount(
            destination="/dev/mqueue",
            type="mqueue",
            source="mqueue",
            options=("rw", "nosuid", "noexec", "nodev"),
        ),
        oci.Mount(
            destination="/dev/shm",
            type="tmpfs",
            source="shm",
            options=(
                "rw",
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                f"size={SHM_SIZE}",
            ),
        ),
    )


def _linux(*, privileged: bool, cgroups_path: str | None) -> oci.Linux:
    namespaces = tuple(oci.Namespace(type=kind) for kind in NAMESPACE_TYPES)
    if privileged:
        return oci.Linux(
            namespaces=namespaces,
            resources=oci.Resources(devices=PRIVILEGED_DEVICE_RULES),
            cgroups_path=cgroups_path,
        )
    return oci.Linux(
        namespaces=namespaces,
        masked_paths=MASKED_PATHS,
        readonly_paths=READONLY_PATHS,
        resources=oci.Resources(devices=DEVICE_RULES),
        cgroups_path=cgroups_path,
    )


def container_spec(
    *,
    rootfs: str,
    hostname: str,
    args: tuple[str, ...],
    env: tuple[str, ...],
    cwd: str,
    user: ResolvedUser,
    privileged: bool,
    apparmor_profile: str,
    capabilities: tuple[str, ...],
    rlimits: tuple[oci.Rlimit, ...] = DEFAULT_RLIMITS,
    cgroups_path: str | None = None,
    all_capabilities: tuple[str, ...] = ALL_CAPABILITIES,
) -> oci.Spec:
    """Build the config.json that runs `args` in `rootfs`.

    `apparmor_profile` comes from select_apparmor_profile and `capabilities`
    is the set of a container that is not privileged. A privileged container
    gets `all_capabilities` whatever `capabilities` contains. Pass the daemon's
    bounding_capabilities there when its bounding set lacks some capability.
    `rlimits` defaults to none, so the container inherits the limits of runc,
    and `cgroups_path` None lets runc choose the cgroup.
    Raises InvalidRequest for empty `args` or a relative `cwd`.
    """
    if not args:
        raise InvalidRequest(
            "invalid container: the command is empty. Give the program to run."
        )

    process = oci.Process(
        terminal=False,
        user=oci.User(uid=user.uid, gid=user.gid, additional_gids=user.additional_gids),
        args=args,
        env=env,
        cwd=check_working_dir(cwd),
        capabilities=capability_sets(all_capabilities if privileged else capabilities),
        rlimits=rlimits,
        no_new_privileges=False,
        apparmor_profile=apparmor_profile,
    )
    return oci.Spec(
        process=process,
        root=oci.Root(path=rootfs),
        hostname=hostname,
        mounts=standard_mounts(privileged=privileged),
        linux=_linux(privileged=privileged, cgroups_path=cgroups_path),
    )
