"""Tests for the OCI spec classes, their JSON form, and container_spec."""

from __future__ import annotations

import json
from typing import Any

import attrs
import cattrs
import pytest

from messages import oci
from messages.errors import InvalidRequest
from messages.execspec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_RLIMITS,
    bounding_capabilities,
)
from messages.spec import MASKED_PATHS, NAMESPACE_TYPES, READONLY_PATHS, container_spec
from messages.users import ResolvedUser


def full_spec() -> oci.Spec:
    """Return a spec that sets every optional field, for round trips to cover."""
    process = oci.Process(
        terminal=False,
        user=oci.User(uid=1000, gid=1000, additional_gids=(10, 50)),
        args=("sh", "-c", "echo hi"),
        env=("PATH=/bin", "A=b=c"),
        cwd="/work",
        capabilities=oci.Capabilities(
            bounding=("CAP_KILL", "CAP_CHOWN"),
            effective=("CAP_KILL",),
            inheritable=("CAP_CHOWN",),
            permitted=("CAP_KILL", "CAP_CHOWN"),
            ambient=("CAP_KILL",),
        ),
        rlimits=(oci.Rlimit(type="RLIMIT_NOFILE", hard=4096, soft=1024),),
        no_new_privileges=True,
        apparmor_profile="docker-default",
        oom_score_adj=-500,
    )
    linux = oci.Linux(
        namespaces=(
            oci.Namespace(type="pid"),
            oci.Namespace(type="network", path="/proc/4242/ns/net"),
        ),
        masked_paths=("/proc/kcore",),
        readonly_paths=("/proc/sys",),
        resources=oci.Resources(
            devices=(
                oci.DeviceCgroup(allow=False, access="rwm"),
                oci.DeviceCgroup(allow=True, type="c", major=1, minor=3, access="rw"),
            )
        ),
        cgroups_path="/dockyard/abc",
    )
    return oci.Spec(
        process=process,
        root=oci.Root(path="/var/lib/dockyard/abc/rootfs", readonly=True),
        hostname="abc",
        mounts=(
            oci.Mount(
                destination="/proc",
                type="proc",
                source="proc",
                options=("nosuid", "noexec"),
            ),
        ),
        linux=linux,
    )


def minimal_spec() -> oci.Spec:
    """Return a spec that leaves every optional field at None."""
    return oci.Spec(
        process=oci.Process(
            user=oci.User(uid=0, gid=0),
            args=("true",),
            cwd="/",
            capabilities=oci.Capabilities(),
        ),
        root=oci.Root(path="rootfs"),
        hostname="h",
        mounts=(),
        linux=oci.Linux(namespaces=(oci.Namespace(type="pid"),)),
    )


def all_keys(value: Any) -> set[str]:
    """Collect every object key in a decoded JSON document."""
    if isinstance(value, dict):
        keys = set(value)
        for item in value.values():
            keys |= all_keys(item)
        return keys
    if isinstance(value, list):
        keys = set()
        for item in value:
            keys |= all_keys(item)
        return keys
    return set()


def all_values(value: Any) -> list[Any]:
    """Collect every scalar in a decoded JSON document."""
    if isinstance(value, dict):
        return [scalar for item in value.values() for scalar in all_values(item)]
    if isinstance(value, list):
        return [scalar for item in value for scalar in all_values(item)]
    return [value]


def mutable_parts(value: Any, where: str = "spec") -> list[str]:
    """List the paths of lists, dicts, sets or unfrozen objects inside `value`."""
    if isinstance(value, list | dict | set | bytearray):
        return [where]
    found = []
    if attrs.has(type(value)):
        fields = attrs.fields(type(value))
        try:
            setattr(value, fields[0].name, getattr(value, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            found.append(f"{where} is not frozen")
        for field in fields:
            found += mutable_parts(getattr(value, field.name), f"{where}.{field.name}")
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            found += mutable_parts(item, f"{where}[{index}]")
    return found


def test_spec_round_trip_full() -> None:
    spec = full_spec()

    assert oci.spec_from_json(oci.spec_to_json(spec)) == spec


def test_spec_round_trip_minimal() -> None:
    spec = minimal_spec()

    assert oci.spec_from_json(oci.spec_to_json(spec)) == spec


def test_process_round_trip() -> None:
    process = full_spec().process

    decoded = json.loads(oci.process_to_json(process))

    assert oci.OCI_CONVERTER.structure(decoded, oci.Process) == process


def test_json_keys_are_camel_case() -> None:
    keys = all_keys(json.loads(oci.spec_to_json(full_spec())))

    for expected in (
        "ociVersion",
        "noNewPrivileges",
        "apparmorProfile",
        "oomScoreAdj",
        "additionalGids",
        "maskedPaths",
        "readonlyPaths",
        "cgroupsPath",
    ):
        assert expected in keys
    assert not [key for key in keys if "_" in key]


def test_json_version_is_spec_version() -> None:
    decoded = json.loads(oci.spec_to_json(minimal_spec()))

    assert decoded["ociVersion"] == oci.OCI_VERSION == "1.0.2"


def test_json_omits_none_fields() -> None:
    decoded = json.loads(oci.spec_to_json(minimal_spec()))

    assert None not in all_values(decoded)
    assert "oomScoreAdj" not in decoded["process"]
    assert "resources" not in decoded["linux"]
    assert "cgroupsPath" not in decoded["linux"]
    assert decoded["linux"]["namespaces"] == [{"type": "pid"}]


def test_json_omits_none_device_fields() -> None:
    decoded = json.loads(oci.spec_to_json(full_spec()))

    rules = decoded["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[1] == {
        "allow": True,
        "type": "c",
        "major": 1,
        "minor": 3,
        "access": "rw",
    }


def test_json_keeps_false_and_empty_values() -> None:
    decoded = json.loads(oci.spec_to_json(minimal_spec()))

    assert decoded["process"]["terminal"] is False
    assert decoded["process"]["noNewPrivileges"] is False
    assert decoded["process"]["user"]["additionalGids"] == []
    assert decoded["mounts"] == []


def test_decoded_spec_is_deeply_immutable() -> None:
    spec = oci.spec_from_json(oci.spec_to_json(full_spec()))

    assert mutable_parts(spec) == []


def test_mutable_parts_finds_list() -> None:
    user = oci.User(uid=0, gid=0, additional_gids=[1])  # type: ignore[arg-type]

    assert mutable_parts(user, "user") == ["user.additional_gids"]


def test_spec_is_frozen() -> None:
    spec = full_spec()

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.hostname = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.process.user.uid = 0  # type: ignore[misc]


def test_spec_from_json_rejects_bad_field() -> None:
    decoded = json.loads(oci.spec_to_json(minimal_spec()))
    decoded["process"]["user"]["uid"] = "root"

    with pytest.raises(cattrs.BaseValidationError):
        oci.spec_from_json(json.dumps(decoded).encode())


# container_spec


ALICE = ResolvedUser(uid=1000, gid=1000, additional_gids=(50,), home="/home/alice")


def build_spec(
    *,
    privileged: bool,
    all_capabilities: tuple[str, ...] = ALL_CAPABILITIES,
    rlimits: tuple[oci.Rlimit, ...] = DEFAULT_RLIMITS,
) -> oci.Spec:
    return container_spec(
        rootfs="/bundle/rootfs",
        hostname="abc123",
        args=("sh", "-c", "true"),
        env=("PATH=/bin",),
        cwd="/",
        user=ALICE,
        privileged=privileged,
        apparmor_profile="docker-default",
        capabilities=DEFAULT_CAPABILITIES,
        rlimits=rlimits,
        all_capabilities=all_capabilities,
    )


def test_container_spec_process() -> None:
    process = build_spec(privileged=False).process

    assert process.terminal is False
    assert process.user == oci.User(uid=1000, gid=1000, additional_gids=(50,))
    assert process.args == ("sh", "-c", "true")
    assert process.env == ("PATH=/bin",)
    assert process.cwd == "/"
    assert process.rlimits == DEFAULT_RLIMITS
    assert process.rlimits == ()
    assert process.no_new_privileges is False
    assert process.apparmor_profile == "docker-default"
    assert process.capabilities.bounding == DEFAULT_CAPABILITIES
    assert process.capabilities.effective == DEFAULT_CAPABILITIES
    assert process.capabilities.permitted == DEFAULT_CAPABILITIES
    assert process.capabilities.inheritable == ()
    assert process.capabilities.ambient == ()


def test_container_spec_namespaces_are_new() -> None:
    linux = build_spec(privileged=False).linux

    assert tuple(ns.type for ns in linux.namespaces) == NAMESPACE_TYPES
    assert {ns.path for ns in linux.namespaces} == {None}
    assert set(NAMESPACE_TYPES) == {"pid", "network", "ipc", "uts", "mount"}


def test_container_spec_standard_mounts() -> None:
    mounts = {mount.destination: mount for mount in build_spec(privileged=False).mounts}

    assert mounts["/proc"].type == "proc"
    assert mounts["/dev"].type == "tmpfs"
    assert mounts["/dev/pts"].type == "devpts"
    assert mounts["/dev/shm"].type == "tmpfs"
    assert mounts["/dev/mqueue"].type == "mqueue"
    assert mounts["/sys"].type == "sysfs"
    assert "ro" in mounts["/sys"].options
    assert "ro" in mounts["/sys/fs/cgroup"].options


def test_container_spec_unprivileged_paths() -> None:
    spec = build_spec(privileged=False)

    assert spec.linux.masked_paths == MASKED_PATHS
    assert spec.linux.readonly_paths == READONLY_PATHS
    assert "/proc/kcore" in MASKED_PATHS
    assert "/proc/sys" in READONLY_PATHS
    assert spec.linux.resources == oci.Resources(
        devices=(oci.DeviceCgroup(allow=False, access="rwm"),)
    )


def test_container_spec_privileged() -> None:
    spec = build_spec(privileged=True)

    assert spec.process.capabilities.bounding == ALL_CAPABILITIES
    assert spec.process.capabilities.effective == ALL_CAPABILITIES
    assert spec.linux.masked_paths == ()
    assert spec.linux.readonly_paths == ()
    assert spec.linux.resources == oci.Resources(
        devices=(oci.DeviceCgroup(allow=True, access="rwm"),)
    )
    sys_mount = next(mount for mount in spec.mounts if mount.destination == "/sys")
    assert "rw" in sys_mount.options
    assert spec.process.apparmor_profile == "docker-default"


def test_container_spec_defaults() -> None:
    spec = container_spec(
        rootfs="rootfs",
        hostname="h",
        args=("true",),
        env=(),
        cwd="/",
        user=ALICE,
        privileged=True,
        apparmor_profile="",
        capabilities=DEFAULT_CAPABILITIES,
    )

    assert spec.process.rlimits == ()
    assert spec.process.capabilities.bounding == ALL_CAPABILITIES
    assert spec.linux.cgroups_path is None


# The capabilities of a host whose bounding set lacks CAP_SYS_RESOURCE.
NO_SYS_RESOURCE = bounding_capabilities("000001fffeffffff")


def test_container_spec_privileged_honours_bounding_set() -> None:
    spec = build_spec(privileged=True, all_capabilities=NO_SYS_RESOURCE)

    capabilities = spec.process.capabilities
    assert "CAP_SYS_RESOURCE" not in NO_SYS_RESOURCE
    assert capabilities.bounding == NO_SYS_RESOURCE
    assert capabilities.effective == NO_SYS_RESOURCE
    assert capabilities.permitted == NO_SYS_RESOURCE
    assert capabilities.inheritable == ()
    assert capabilities.ambient == ()


def test_container_spec_unprivileged_ignores_bounding_set() -> None:
    spec = build_spec(privileged=False, all_capabilities=NO_SYS_RESOURCE)

    assert spec.process.capabilities.bounding == DEFAULT_CAPABILITIES
    assert spec.process.capabilities.effective == DEFAULT_CAPABILITIES


def test_container_spec_explicit_rlimits() -> None:
    rlimits = (oci.Rlimit(type="RLIMIT_NOFILE", hard=4096, soft=1024),)

    spec = build_spec(privileged=False, rlimits=rlimits)

    assert spec.process.rlimits == rlimits


def test_container_spec_json_without_rlimits() -> None:
    decoded = json.loads(oci.spec_to_json(build_spec(privileged=False)))

    assert decoded["process"].get("rlimits", []) == []


def test_container_spec_has_no_network_files() -> None:
    destinations = {mount.destination for mount in build_spec(privileged=False).mounts}

    assert not destinations & {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}


def test_container_spec_rejects_empty_args() -> None:
    with pytest.raises(InvalidRequest, match="command is empty"):
        container_spec(
            rootfs="rootfs",
            hostname="h",
            args=(),
            env=(),
            cwd="/",
            user=ALICE,
            privileged=False,
            apparmor_profile="",
            capabilities=DEFAULT_CAPABILITIES,
        )


def test_container_spec_rejects_relative_cwd() -> None:
    with pytest.raises(InvalidRequest, match="'app'"):
        container_spec(
            rootfs="rootfs",
            hostname="h",
            args=("true",),
            env=(),
            cwd="app",
            user=ALICE,
            privileged=False,
            apparmor_profile="",
            capabilities=DEFAULT_CAPABILITIES,
        )


def test_container_spec_json_is_deeply_immutable() -> None:
    spec = build_spec(privileged=False)

    assert mutable_parts(spec) == []
    assert oci.spec_from_json(oci.spec_to_json(spec)) == spec
