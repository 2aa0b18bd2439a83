"""Tests for the exec process spec and the AppArmor and capability rules."""

from __future__ import annotations

import attrs
import pytest

from messages import oci
from messages.errors import InvalidRequest
from messages.execspec import (
    ALL_CAPABILITIES,
    DEFAULT_APPARMOR_PROFILE,
    DEFAULT_CAPABILITIES,
    DEFAULT_RLIMITS,
    UNCONFINED_APPARMOR_PROFILE,
    ExecContainer,
    ExecOptions,
    bounding_capabilities,
    exec_process,
    merge_env,
    select_apparmor_profile,
)
from messages.users import ResolvedUser

ROOT = ResolvedUser(uid=0, gid=0)

CONTAINER = ExecContainer(
    env=("PATH=/usr/bin:/bin", "HOSTNAME=abc", "MODE=prod"),
    working_dir="/srv",
    privileged=False,
    apparmor_profile=DEFAULT_APPARMOR_PROFILE,
    capabilities=DEFAULT_CAPABILITIES,
)


@attrs.frozen
class ProfileCase:
    name: str
    custom_profile: str | None
    privileged_container: bool
    # The expected profile on a host with AppArmor. Without AppArmor it is "".
    expected_profile: str


PROFILE_CASES = [
    ProfileCase("default options", None, False, DEFAULT_APPARMOR_PROFILE),
    ProfileCase("custom profile", "my-profile", False, "my-profile"),
    ProfileCase("empty custom profile", "", False, DEFAULT_APPARMOR_PROFILE),
    ProfileCase("privileged container", None, True, UNCONFINED_APPARMOR_PROFILE),
    ProfileCase("privileged with custom", "my-profile", True, "my-profile"),
]


@pytest.mark.parametrize(
    "host_has_apparmor", [True, False], ids=["apparmor", "no-apparmor"]
)
@pytest.mark.parametrize(
    "exec_privileged", [False, True], ids=["exec", "exec-privileged"]
)
@pytest.mark.parametrize(
    "case", PROFILE_CASES, ids=[case.name for case in PROFILE_CASES]
)
def test_exec_profile_and_capabilities(
    case: ProfileCase, exec_privileged: bool, host_has_apparmor: bool
) -> None:
    # Step 1, at container start: select the profile and store it in the record.
    profile = select_apparmor_profile(
        case.custom_profile, case.privileged_container, host_has_apparmor
    )
    container = ExecContainer(
        env=(),
        working_dir="",
        privileged=case.privileged_container,
        apparmor_profile=profile,
        capabilities=DEFAULT_CAPABILITIES,
    )

    # Step 2, at exec: the process inherits the stored profile.
    options = ExecOptions(cmd=("id",), privileged=exec_privileged)
    process = exec_process(container=container, options=options, user=ROOT)

    expected_profile = case.expected_profile if host_has_apparmor else ""
    assert profile == expected_profile
    assert process.apparmor_profile == expected_profile
    if case.privileged_container or exec_privileged:
        expected_capabilities = ALL_CAPABILITIES
    else:
        expected_capabilities = DEFAULT_CAPABILITIES
    assert process.capabilities.bounding == expected_capabilities
    assert process.capabilities.effective == expected_capabilities
    assert process.capabilities.permitted == expected_capabilities
    assert process.capabilities.inheritable == ()
    assert process.capabilities.ambient == ()


def test_exec_privileged_keeps_default_profile() -> None:
    options = ExecOptions(cmd=("sh",), privileged=True)

    process = exec_process(container=CONTAINER, options=options, user=ROOT)

    assert process.apparmor_profile == DEFAULT_APPARMOR_PROFILE
    assert process.capabilities.bounding == ALL_CAPABILITIES


def test_exec_never_recomputes_profile() -> None:
    # The record stores "", as after a start on a host without AppArmor. A
    # privileged exec keeps it, though a new selection would return unconfined.
    container = attrs.evolve(CONTAINER, apparmor_profile="")
    options = ExecOptions(cmd=("sh",), privileged=True)

    process = exec_process(container=container, options=options, user=ROOT)

    assert process.apparmor_profile == ""


def test_capability_constants() -> None:
    assert len(DEFAULT_CAPABILITIES) == 14
    assert len(set(DEFAULT_CAPABILITIES)) == 14
    assert set(DEFAULT_CAPABILITIES) <= set(ALL_CAPABILITIES)
    assert len(ALL_CAPABILITIES) == 41
    assert len(set(ALL_CAPABILITIES)) == 41
    assert ALL_CAPABILITIES[0] == "CAP_CHOWN"
    assert ALL_CAPABILITIES[21] == "CAP_SYS_ADMIN"
    assert ALL_CAPABILITIES[40] == "CAP_CHECKPOINT_RESTORE"


# The CapBnd line of a host whose bounding set lacks CAP_SYS_RESOURCE (24).
NO_SYS_RESOURCE_MASK = "000001fffeffffff"
NO_SYS_RESOURCE = tuple(name for name in ALL_CAPABILITIES if name != "CAP_SYS_RESOURCE")

# (CapBnd value, expected capabilities)
BOUNDING_CASES = [
    ("000001ffffffffff", ALL_CAPABILITIES),
    (NO_SYS_RESOURCE_MASK, NO_SYS_RESOURCE),
    ("0000000000000000", ()),
    ("0", ()),
    ("0000000000000001", ("CAP_CHOWN",)),
    ("0000000000200020", ("CAP_KILL", "CAP_SYS_ADMIN")),
    ("0000010000000000", ("CAP_CHECKPOINT_RESTORE",)),
    # Bits above CAP_CHECKPOINT_RESTORE have no name, so they are dropped.
    ("ffffffffffffffff", ALL_CAPABILITIES),
    ("0000020000000000", ()),
    ("000001FFFEFFFFFF", NO_SYS_RESOURCE),
    ("000001fffeffffff\n", NO_SYS_RESOURCE),
]


@pytest.mark.parametrize(("mask", "expected"), BOUNDING_CASES)
def test_bounding_capabilities(mask: str, expected: tuple[str, ...]) -> None:
    assert bounding_capabilities(mask) == expected


def test_bounding_capabilities_drops_sys_resource() -> None:
    names = bounding_capabilities(NO_SYS_RESOURCE_MASK)

    assert set(ALL_CAPABILITIES) - set(names) == {"CAP_SYS_RESOURCE"}
    assert len(names) == len(ALL_CAPABILITIES) - 1


@pytest.mark.parametrize("mask", ["", "  ", "0x1f", "-1", "+1f", "1_f", "xyz"])
def test_bounding_capabilities_rejects_bad_mask(mask: str) -> None:
    with pytest.raises(ValueError, match="invalid capability mask"):
        bounding_capabilities(mask)


# (container privileged, exec privileged)
PRIVILEGE_CASES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize(("container_privileged", "exec_privileged"), PRIVILEGE_CASES)
def test_exec_honours_all_capabilities(
    container_privileged: bool, exec_privileged: bool
) -> None:
    container = attrs.evolve(
        CONTAINER, privileged=container_privileged, all_capabilities=NO_SYS_RESOURCE
    )
    options = ExecOptions(cmd=("id",), privileged=exec_privileged)

    process = exec_process(container=container, options=options, user=ROOT)

    if container_privileged or exec_privileged:
        expected = NO_SYS_RESOURCE
    else:
        expected = DEFAULT_CAPABILITIES
    assert process.capabilities.bounding == expected
    assert process.capabilities.effective == expected
    assert process.capabilities.permitted == expected
    assert process.capabilities.inheritable == ()
    assert process.capabilities.ambient == ()


def test_exec_container_all_capabilities_default() -> None:
    assert CONTAINER.all_capabilities == ALL_CAPABILITIES


# (container env, exec env, expected env)
ENV_CASES = [
    (("A=1", "B=2"), (), ("A=1", "B=2")),
    (("A=1", "B=2"), ("B=3",), ("A=1", "B=3")),
    (("A=1", "B=2"), ("A=9",), ("A=9", "B=2")),
    (("A=1",), ("C=3",), ("A=1", "C=3")),
    (("A=1", "B=2"), ("A",), ("B=2",)),
    (("A=1",), ("A=",), ("A=",)),
    (("A=1",), ("X=a=b",), ("A=1", "X=a=b")),
    ((), ("A=1", "A=2"), ("A=2",)),
]


@pytest.mark.parametrize(("base", "overrides", "expected"), ENV_CASES)
def test_merge_env(
    base: tuple[str, ...], overrides: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    assert merge_env(base, overrides) == expected


def test_exec_env_overrides_container() -> None:
    options = ExecOptions(cmd=("env",), env=("MODE=debug", "EXTRA=1"))

    process = exec_process(container=CONTAINER, options=options, user=ROOT)

    assert process.env == (
        "PATH=/usr/bin:/bin",
        "HOSTNAME=abc",
        "MODE=debug",
        "EXTRA=1",
    )


def test_exec_env_rejects_empty_key() -> None:
    options = ExecOptions(cmd=("env",), env=("=value",))

    with pytest.raises(InvalidRequest, match="'=value'"):
        exec_process(container=CONTAINER, options=options, user=ROOT)


# (container working dir, exec working dir, expected cwd)
CWD_CASES = [
    ("/srv", "/tmp", "/tmp"),
    ("/srv", None, "/srv"),
    ("", None, "/"),
    ("", "/tmp", "/tmp"),
]


@pytest.mark.parametrize(("container_dir", "exec_dir", "expected"), CWD_CASES)
def test_exec_cwd(container_dir: str, exec_dir: str | None, expected: str) -> None:
    container = attrs.evolve(CONTAINER, working_dir=container_dir)
    options = ExecOptions(cmd=("pwd",), working_dir=exec_dir)

    process = exec_process(container=container, options=options, user=ROOT)

    assert process.cwd == expected


def test_exec_rejects_relative_cwd() -> None:
    options = ExecOptions(cmd=("pwd",), working_dir="tmp")

    with pytest.raises(InvalidRequest, match=r"'tmp'.*absolute"):
        exec_process(container=CONTAINER, options=options, user=ROOT)


def test_exec_user() -> None:
    user = ResolvedUser(uid=1000, gid=50, additional_gids=(10, 29), home="/home/a")

    process = exec_process(
        container=CONTAINER, options=ExecOptions(cmd=("id",)), user=user
    )

    assert process.user == oci.User(uid=1000, gid=50, additional_gids=(10, 29))


def test_exec_process_defaults() -> None:
    options = ExecOptions(cmd=("sh", "-c", "echo hi"))

    process = exec_process(container=CONTAINER, options=options, user=ROOT)

    assert process.args == ("sh", "-c", "echo hi")
    assert process.terminal is False
    assert process.no_new_privileges is False
    assert process.rlimits == DEFAULT_RLIMITS
    assert process.rlimits == ()
    assert process.oom_score_adj is None


def test_exec_inherits_container_rlimits() -> None:
    rlimits = (oci.Rlimit(type="RLIMIT_NOFILE", hard=4096, soft=1024),)
    container = attrs.evolve(CONTAINER, rlimits=rlimits)

    process = exec_process(
        container=container, options=ExecOptions(cmd=("sh",)), user=ROOT
    )

    assert process.rlimits == rlimits


def test_exec_rejects_empty_cmd() -> None:
    with pytest.raises(InvalidRequest, match="command is empty"):
        exec_process(container=CONTAINER, options=ExecOptions(cmd=()), user=ROOT)
