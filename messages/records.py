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
from typing import Any

import attrs
import cattrs

from messages.errors import InvalidRequest

# Container states, with Docker's names.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"
REMOVING = "removing"

RECORD_FORMAT_VERSION = 1
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
    document: dict[str, Any] = {
        "version": RECORD_FORMAT_VERSION,
        "container": RECORD_CONVERTER.unstructure(record),
    }
    return json.dumps(document, sort_keys=True).encode()


@attrs.frozen
class StoredState:
    """The part of a record that changes after the create."""

    state: ContainerState
    lockin: RuntimeLockIn | None


def state_to_json(record: ContainerRecord) -> bytes:
    stored = StoredState(state=record.state, lockin=record.lockin)
    document: dict[str, Any] = {
        "version": RECORD_FORMAT_VERSION,
        "stored": RECORD_CONVERTER.unstructure(stored),
    }
    return json.dumps(document, sort_keys=True).encode()


def state_from_json(data: bytes, *, source: str) -> StoredState:
    """Decode a state file; `source` names it in the error."""
    try:
        document = json.loads(data)
        if document.get("version") != RECORD_FORMAT_VERSION:
            raise ValueError(f"unknown state version {document.get('version')!r}")
        return RECORD_CONVERTER.structure(document["stored"], StoredState)
    except (*_DECODE_ERRORS, cattrs.BaseValidationError) as error:
        raise InvalidRequest(
            f"container state {source} is unreadable ({error})"
        ) from None


def record_from_json(data: bytes, *, source: str) -> ContainerRecord:
    """Decode a record file; `source` names it in the error."""
    try:
        document = json.loads(data)
        if document.get("version") != RECORD_FORMAT_VERSION:
            raise ValueError(f"unknown record version {document.get('version')!r}")
        return RECORD_CONVERTER.structure(document["container"], ContainerRecord)
    except (*_DECODE_ERRORS, cattrs.BaseValidationError) as error:
        raise InvalidRequest(
            f"container record {source} is unreadable ({error}); move it away "
            "to let the daemon start without it."
        ) from None
