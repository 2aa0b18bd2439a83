"""Requests to create containers, and how they combine with the image.

Pure functions: they turn what a client asked for, plus the image's
defaults, into the ContainerConfig that the record stores.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping

import attrs

from messages.errors import InvalidRequest
from messages.execspec import check_working_dir, merge_env
from messages.images import ImageRecord
from messages.records import ContainerConfig

# Docker's rule for container names.
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
APPARMOR_OPTION = "apparmor"
# The PATH a container gets when neither the image nor the request sets one.
# Characters of a bad value quoted in an error message.
MAX_SHOWN_CHARS = 80
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet")
_NOUNS = ("anchor", "buoy", "crane", "dock", "hull", "keel", "mast", "pier")


def _frozen_labels(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class CreateContainer:
    """A create request. None for `cmd` or `entrypoint` means the image's."""

    image: str
    name: str = ""
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)
    runtime: str = ""
    privileged: bool = False
    security_opt: tuple[str, ...] = ()
    auto_remove: bool = False
    stop_signal: str = ""
    stop_timeout: int | None = None


def check_container_name(name: str) -> str:
    """Return the name without a leading '/', or raise naming the rule."""
    bare = name.removeprefix("/")
    if not _CONTAINER_NAME.match(bare):
        raise InvalidRequest(
            f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
            "are allowed, and it must be at least two characters long"
        )
    return bare


def generated_name(container_id: str, attempt: int = 0) -> str:
    """Derive a readable name from the id; `attempt` varies it after a clash."""
    number = int(container_id[:8], 16) + attempt
    adjective = _ADJECTIVES[number % len(_ADJECTIVES)]
    noun = _NOUNS[(number // len(_ADJECTIVES)) % len(_NOUNS)]
    return f"{adjective}_{noun}_{container_id[:6]}{attempt or ''}"


def apparmor_option(security_opt: tuple[str, ...]) -> str | None:
    """Return the profile of `apparmor=PROFILE`, rejecting options not supported."""
    profile: str | None = None
    for option in security_opt:
        key, separator, value = option.partition("=")
        if not separator:
            key, separator, value = option.partition(":")
        if key == APPARMOR_OPTION and separator and value:
            profile = value
            continue
        raise InvalidRequest(
            f"security option {option!r} is not supported; Dockyard supports "
            "only apparmor=PROFILE"
        )
    return profile


def container_config(request: CreateContainer, image: ImageRecord) -> ContainerConfig:
    """Apply the image's defaults to a create request."""
    entrypoint = image.entrypoint if request.entrypoint is None else request.entrypoint
    if request.cmd is not None:
        cmd = request.cmd
    elif request.entrypoint is not None:
        # As in Docker: a new entrypoint drops the image's command.
        cmd = ()
    else:
        cmd = image.cmd
    if not entrypoint and not cmd:
        raise InvalidRequest(
            f"no command given and image {request.image!r} has none; give the "
            "command to run after the image name"
        )
    working_dir = request.working_dir or image.working_dir
    # Checked now, as the start would fail on them and leave a created
    # container that can never start.
    if working_dir:
        check_working_dir(working_dir)
    for field, values in (
        ("command", (*entrypoint, *cmd)),
        ("environment variable", request.env),
        ("user", (request.user,)),
        ("hostname", (request.hostname,)),
    ):
        _reject_nul(field, values)
    return ContainerConfig(
        image=request.image,
        image_id=image.id,
        cmd=cmd,
        entrypoint=entrypoint,
        env=merge_env(image.env, request.env),
        working_dir=working_dir,
        user=request.user or image.user,
        hostname=request.hostname,
        labels=request.labels,
        runtime=request.runtime,
        privileged=request.privileged,
        apparmor_profile=apparmor_option(request.security_opt),
        auto_remove=request.auto_remove,
        stop_signal=request.stop_signal or "SIGTERM",
        stop_timeout=request.stop_timeout,
    )


def _reject_nul(field: str, values: Iterable[str]) -> None:
    for value in values:
        if "\0" in value:
            quoted = (
                value
                if len(value) <= MAX_SHOWN_CHARS
                else value[:MAX_SHOWN_CHARS] + "..."
            )
            raise InvalidRequest(
                f"invalid {field} {quoted!r}: it contains a NUL byte, which a "
                "process cannot receive. Remove it."
            )


def with_default_path(env: tuple[str, ...]) -> tuple[str, ...]:
    """Return `env` with DEFAULT_PATH in front unless it sets PATH itself."""
    if any(entry.startswith("PATH=") for entry in env):
        return env
    return (f"PATH={DEFAULT_PATH}", *env)
