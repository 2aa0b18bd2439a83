"""The OCI process of an exec, and the AppArmor and capability rules it follows.

The AppArmor profile is chosen once, when the container starts, by
select_apparmor_profile, and stored in the container's record. An exec
inherits that stored profile and never selects again. So `exec --privileged`
grants every capability but keeps the container's profile, as in dockerd.

"Every capability" means every capability in the daemon's bounding set,
because runc cannot grant a capability that the process running it lacks.
The caller reads that set from /proc/self/status and passes it through
bounding_capabilities.
"""

from __future__ import annotations

import string

import attrs

from messages import oci
from messages.errors import InvalidRequest
from messages.users import ResolvedUser

DEFAULT_APPARMOR_PROFILE = "docker-default"
UNCONFINED_APPARMOR_PROFILE = "unconfined"

# The capabilities dockerd gives a container that is not privileged.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Every capability in the Linux headers up to CAP_CHECKPOINT_RESTORE (40),
# indexed by capability number. runc 1.1 skips, with a warning, any capability
# that the running kernel does not know. A capability missing from the bounding
# set of the process that runs runc makes runc fail with "unable to apply caps".
# Where the daemon's bounding set is smaller, the caller passes
# bounding_capabilities as `all_capabilities` to the spec builders.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# Resource limits written into every container and exec spec: none, as
# dockerd 20.10 writes none unless --ulimit or --default-ulimit sets some.
# runc then calls no setrlimit, so each process inherits the limits of the
# daemon that started runc. Fixed limits would make runc fail with "error
# setting rlimits" wherever they exceed the daemon's hard limit and the daemon
# lacks CAP_SYS_RESOURCE. Callers may still pass explicit limits.
DEFAULT_RLIMITS: tuple[oci.Rlimit, ...] = ()

# Working directory when neither the exec nor the container sets one.
DEFAULT_WORKING_DIR = "/"


def select_apparmor_profile(
    custom: str | None, privileged: bool, host_has_apparmor: bool
) -> str:
    """Select the AppArmor profile of a container at its start, as dockerd does.

    On a host without AppArmor the profile is empty, so runc applies none.
    Otherwise a custom profile wins (an empty string counts as none), then a
    privileged container runs unconfined, and any other gets the default.
    """
    if not host_has_apparmor:
        return ""
    if custom:
        return custom
    if privileged:
        return UNCONFINED_APPARMOR_PROFILE
    return DEFAULT_APPARMOR_PROFILE


def bounding_capabilities(cap_bnd_hex: str) -> tuple[str, ...]:
    """Map a capability mask onto the names in ALL_CAPABILITIES.

    `cap_bnd_hex` is the hexadecimal value of the CapBnd line of
    /proc/self/status, such as "000001fffeffffff". Bit n set selects
    ALL_CAPABILITIES[n]. The result keeps kernel number order. Raises
    ValueError if `cap_bnd_hex` is not hexadecimal.
    """
    digits = cap_bnd_hex.strip()
    if not digits or any(char not in string.hexdigits for char in digits):
        raise ValueError(
            f"invalid capability mask {cap_bnd_hex!r}: expected hexadecimal "
            "digits, as in the CapBnd line of /proc/self/status"
        )

    # NOTE: bits above CAP_CHECKPOINT_RESTORE (40) are dropped, because
    # ALL_CAPABILITIES has no name for them.
    mask = int(digits, 16)
    return tuple(
        name for number, name in enumerate(ALL_CAPABILITIES) if mask >> number & 1
    )


def capability_sets(names: tuple[str, ...]) -> oci.Capabilities:
    """Build the capability sets that give a process exactly `names`.

    The inheritable and ambient sets stay empty, as dockerd has left them since
    the fix for CVE-2022-24769, so a program with inheritable file capabilities
    does not gain them when the process executes it.
    """
    return oci.Capabilities(bounding=names, effective=names, permitted=names)


@attrs.frozen(kw_only=True)
class ExecContainer:
    """The parts of a container's record that an exec needs."""

    env: tuple[str, ...]
    # An empty string means the image sets no working directory.
    working_dir: str
    privileged: bool
    # The profile select_apparmor_profile chose when the container started.
    apparmor_profile: str
    capabilities: tuple[str, ...]
    # The resource limits the container started with, which an exec inherits.
    rlimits: tuple[oci.Rlimit, ...] = DEFAULT_RLIMITS
    # Capabilities of a privileged exec and of every exec in a privileged
    # container. Pass the daemon's bounding_capabilities where it lacks some.
    all_capabilities: tuple[str, ...] = ALL_CAPABILITIES


@attrs.frozen(kw_only=True)
class ExecOptions:
    """The parameters of one exec request."""

    cmd: tuple[str, ...]
    # `KEY=VALUE` overrides the container's value. A bare `KEY` removes it.
    env: tuple[str, ...] = ()
    # None runs in the container's working directory.
    working_dir: str | None = None
    # The `--user` value. The caller resolves it into exec_process's `user`.
    user: str = ""
    privileged: bool = False


def merge_env(base: tuple[str, ...], overrides: tuple[str, ...]) -> tuple[str, ...]:
    """Apply `overrides` to `base` by key, keeping the order in which keys appear.

    This is dockerd's rule: `KEY=VALUE` replaces KEY or appends it, and an
    entry without `=` removes KEY. Raises InvalidRequest for an empty key.
    """
    merged: dict[str, str | None] = {}
    for entry in (*base, *overrides):
        key, equals, _ = entry.partition("=")
        if not key:
            raise InvalidRequest(
                f"invalid environment variable {entry!r}: expected KEY=VALUE "
                "with a non-empty KEY"
            )
        merged[key] = entry if equals else None
    return tuple(entry for entry in merged.values() if entry is not None)


def check_working_dir(path: str) -> str:
    """Return `path` if it is absolute, else raise InvalidRequest."""
    if not path.startswith("/"):
        raise InvalidRequest(
            f"invalid working directory {path!r}: it must be an absolute path, "
            "such as /app"
        )
    if "\0" in path:
        raise InvalidRequest(
            f"invalid working directory {path!r}: it contains a NUL byte. Remove it."
        )
    return path


def exec_process(
    *, container: ExecContainer, options: ExecOptions, user: ResolvedUser
) -> oci.Process:
    """Compute the process spec that `runc exec --process` runs for an exec.

    `user` is the exec's `--user`, or the container's user when that is empty,
    resolved against the container's /etc/passwd and /etc/group. runc sets
    HOME from the container's /etc/passwd when the environment has none.
    Raises InvalidRequest for an empty command, a relative working directory
    or an environment entry with an empty key.
    """
    if not options.cmd:
        raise InvalidRequest(
            "invalid exec: the command is empty. Give the program to run."
        )

    working_dir = options.working_dir or container.working_dir or DEFAULT_WORKING_DIR
    if container.privileged or options.privileged:
        capabilities = container.all_capabilities
    else:
        capabilities = container.capabilities

    return oci.Process(
        terminal=False,
        user=oci.User(uid=user.uid, gid=user.gid, additional_gids=user.additional_gids),
        args=options.cmd,
        env=merge_env(container.env, options.env),
        cwd=check_working_dir(working_dir),
        capabilities=capability_sets(capabilities),
        rlimits=container.rlimits,
        no_new_privileges=False,
        # Inherited, never recomputed: --privileged on the exec leaves it as is.
        apparmor_profile=container.apparmor_profile,
    )
