"""Daemon events, as `docker events` shows them."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import attrs

from messages.snapshot import Snapshot


def _frozen_attributes(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class Event:
    """One event. `time_nano` is nanoseconds since the Unix epoch."""

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_attributes
    )
    time_nano: int = 0


def event_to_docker_json(event: Event) -> dict[str, Any]:
    """Encode an event in the Docker Engine API's message format."""
    encoded: dict[str, Any] = {
        "Type": event.type,
        "Action": event.action,
        "Actor": {"ID": event.actor_id, "Attributes": dict(event.attributes)},
        "scope": "local",
        "time": event.time_nano // 1_000_000_000,
        "timeNano": event.time_nano,
    }
    if event.type == "container":
        # Fields older docker clients still read.
        encoded["status"] = event.action
        encoded["id"] = event.actor_id
        encoded["from"] = event.attributes.get("image", "")
    return encoded


def reload_event_attributes(snapshot: Snapshot) -> dict[str, str]:
    """Describe a committed configuration for the `reload` daemon event."""
    config = snapshot.config
    runtimes = ", ".join(
        f"{name}:{' '.join((runtime.path, *runtime.config.runtime_args))}"
        for name, runtime in sorted(snapshot.runtimes.items())
    )
    return {
        "generation": str(snapshot.generation),
        "runtimes": runtimes,
        "default-runtime": config.default_runtime,
        "debug": str(config.debug).lower(),
        "labels": ",".join(config.labels),
        "shutdown-timeout": str(config.shutdown_timeout),
    }
