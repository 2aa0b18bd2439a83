"""The parts of the OCI runtime spec that Dockyard writes for runc.

The classes follow config.json of runtime-spec 1.0.2, restricted to the fields
Dockyard sets and runc 1.1.5 reads. Python attributes are snake_case.
OCI_CONVERTER renames them to the camelCase keys of the spec (`noNewPrivileges`,
`additionalGids`) and leaves out every field whose value is None, so an unset
optional field never reaches runc as `null`. Sequences are tuples, so a spec is
immutable all the way down.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

# Version written to `ociVersion`. runc 1.1.5 implements runtime-spec 1.0.2.
OCI_VERSION = "1.0.2"


@attrs.frozen(kw_only=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class Capabilities:
    """The five Linux capability sets of a process, as `CAP_*` names."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Rlimit:
    """A POSIX resource limit such as `RLIMIT_NOFILE`."""

    type: str
    hard: int
    soft: int


@attrs.frozen(kw_only=True)
class Process:
    """The process runc starts, for a container (config.json) or an exec."""

    terminal: bool = False
    user: User
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str
    capabilities: Capabilities
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    # With an empty profile, runc applies no AppArmor profile.
    apparmor_profile: str = ""
    oom_score_adj: int | None = None


@attrs.frozen(kw_only=True)
class Root:
    path: str
    readonly: bool = False


@attrs.frozen(kw_only=True)
class Mount:
    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Namespace:
    """A Linux namespace: a new one, or the existing one at `path`."""

    type: str
    path: str | None = None


@attrs.frozen(kw_only=True)
class DeviceCgroup:
    """A device cgroup rule. A type, major or minor of None matches every value."""

    allow: bool
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    access: str | None = None


@attrs.frozen(kw_only=True)
class Resources:
    devices: tuple[DeviceCgroup, ...] = ()


@attrs.frozen(kw_only=True)
class Linux:
    namespaces: tuple[Namespace, ...]
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    resources: Resources | None = None
    cgroups_path: str | None = None


@attrs.frozen(kw_only=True)
class Spec:
    """A complete config.json."""

    oci_version: str = OCI_VERSION
    process: Process
    root: Root
    hostname: str
    mounts: tuple[Mount, ...]
    linux: Linux


def _camel_case(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _camel_case_renames(cls: type[Any]) -> dict[str, Any]:
    return {
        field.name: override(rename=_camel_case(field.name))
        for field in attrs.fields(cls)
    }


def _make_unstructure(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    renames = _camel_case_renames(cls)
    unstructure_all = make_dict_unstructure_fn(cls, OCI_CONVERTER, **renames)

    def unstructure(value: Any) -> dict[str, Any]:
        fields = unstructure_all(value)
        return {key: item for key, item in fields.items() if item is not None}

    return unstructure


def _make_structure(cls: type[Any]) -> Callable[[Any, Any], Any]:
    renames = _camel_case_renames(cls)
    return make_dict_structure_fn(cls, OCI_CONVERTER, **renames)


# The one converter between these classes and config.json / process.json.
OCI_CONVERTER = cattrs.Converter()
OCI_CONVERTER.register_unstructure_hook_factory(attrs.has, _make_unstructure)
OCI_CONVERTER.register_structure_hook_factory(attrs.has, _make_structure)


def spec_to_json(spec: Spec) -> bytes:
    """Encode a spec as the content of a bundle's config.json."""
    return json.dumps(OCI_CONVERTER.unstructure(spec)).encode()


def process_to_json(process: Process) -> bytes:
    """Encode a process as the file `runc exec --process` reads."""
    return json.dumps(OCI_CONVERTER.unstructure(process)).encode()


def spec_from_json(data: bytes) -> Spec:
    """Decode a config.json. Raises a cattrs validation error naming the bad field."""
    return OCI_CONVERTER.structure(json.loads(data), Spec)
