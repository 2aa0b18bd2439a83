"""Container records: what the daemon persists about each container.

The record carries the runtime lock-in: the runtime name, the binary and
the snapshot generation that the container's start resolved. Every later
lifecycle call for the container goes through `lockin.binary`, never
through the current snapshot, so a reload cannot strand a container.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from messages.errors import InvalidRequest

# Container states, with Docker's names.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"
REMOVING = "removing"

RECORD_FORMAT_VERSION = 1
T = TypeVar("T")
# RecursionError: json.loads of deeply nested arrays.
_DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _frozen_labels(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class ContainerConfig:
    """The settings of a create request, with the image's defaults applied."""

    image: str
    image_id: str
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)
    runtime: str = ""
    privileged: bool = False
    apparmor_profile: str | None = None
    auto_remove: bool = False
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None

    @property
    def args(self) -> tuple[str, ...]:
        return (*self.entrypoint, *self.cmd)


@attrs.frozen
class RuntimeLockIn:
    """The runtime a container was started with, fixed until it is deleted."""

    name: str
    binary: str
    path: str
    generation: int
    apparmor_profile: str


@attrs.frozen
class ContainerState:
    status: str = CREATED
    pid: int = 0
    exit_code: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""


@attrs.frozen
class ContainerRecord:
    id: str
    name: str
    created: float
    config: ContainerConfig
    state: ContainerState = attrs.field(factory=ContainerState)
    lockin: RuntimeLockIn | None = None

    @property
    def running(self) -> bool:
        return self.state.status == RUNNING


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook_func(
        lambda kind: kind == Mapping[str, str],
        lambda value, _: dict(value),
    )
    return converter


RECORD_CONVERTER = _make_converter()


def record_to_json(record: ContainerRecord) -> bytes:
    return _encode("container", record)


@attrs.frozen
class StoredState:
    """The part of a record that changes after the create."""

    state: ContainerState
    lockin: RuntimeLockIn | None


def state_to_json(record: ContainerRecord) -> bytes:
    return _encode("stored", StoredState(state=record.state, lockin=record.lockin))


def state_from_json(data: bytes, *, source: str) -> StoredState:
    """Decode a state file; `source` names it in the error."""
    try:
        return _decode(data, "stored", StoredState)
    except (*_DECODE_ERRORS, cattrs.BaseValidationError) as error:
        message = f"container state {source} is unreadable ({error})"
        raise InvalidRequest(message) from None


def record_from_json(data: bytes, *, source: str) -> ContainerRecord:
    """Decode a record file; `source` names it in the error."""
    try:
        return _decode(data, "container", ContainerRecord)
    except (*_DECODE_ERRORS, cattrs.BaseValidationError) as error:
        raise InvalidRequest(
            f"container record {source} is unreadable ({error}); move it away "
            "to let the daemon start without it."
        ) from None


def _encode(key: str, value: object) -> bytes:
    """Encode `value` under `key`, beside the format version."""
    document: dict[str, Any] = {
        "version": RECORD_FORMAT_VERSION,
        key: RECORD_CONVERTER.unstructure(value),
    }
    return json.dumps(document, sort_keys=True).encode()


def _decode(data: bytes, key: str, kind: type[T]) -> T:
    """Decode what `_encode` wrote, raising a _DECODE_ERRORS or cattrs error."""
    document = json.loads(data)
    if document.get("version") != RECORD_FORMAT_VERSION:
        raise ValueError(f"unknown format version {document.get('version')!r}")
    structured: T = RECORD_CONVERTER.structure(document[key], kind)
    return structured
