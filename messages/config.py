"""The daemon's configuration: daemon.json and the flags of `dockyard daemon`.

Keys are spelled as dockerd spells them. Decoding is all or nothing: a bad
file raises InvalidConfig naming the file, the key path and the fix, and
returns no partial value. The result is deeply immutable (tuples and
read-only mappings), because it becomes part of a published snapshot.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from messages.errors import InvalidConfig

# The built-in runtime. It is always configured and cannot be redefined,
# as in dockerd, so that every container has a runtime to fall back on.
BUILTIN_RUNTIME = "runc"

DEFAULT_DATA_ROOT = "/var/lib/dockyard"
DEFAULT_EXEC_ROOT = "/run/dockyard"
DEFAULT_HOST = "unix:///run/dockyard/dockyard.sock"
# dockerd's default: ten seconds for containers to stop on shutdown.
DEFAULT_SHUTDOWN_TIMEOUT = 15

# Keys a reload applies. The others are read once, at daemon start.
RELOADABLE_KEYS = ("runtimes", "default-runtime", "debug", "labels", "shutdown-timeout")
RESTART_KEYS = ("data-root", "exec-root", "hosts")

# Runtime names become file names under <data-root>/runtimes/.
_RUNTIME_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")
# A wrapper's file name is the runtime name, a dot and 64 hex digits, and
# must fit Linux's 255-byte limit on a file name, with room to spare.
MAX_RUNTIME_NAME = 128
_LABEL = re.compile(r"[^=\s]+=.*", re.DOTALL)
# A bound that keeps every timeout finite: one day.
MAX_SHUTDOWN_TIMEOUT = 86400
_UNSUPPORTED_RUNTIME_KEYS = ("runtimeType", "options")


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class RuntimeConfig:
    """One entry of `runtimes` in daemon.json."""

    path: str
    runtime_args: tuple[str, ...] = ()


@attrs.frozen
class DaemonConfig:
    """The user's configuration, after the file and the flags are merged."""

    runtimes: Mapping[str, RuntimeConfig] = attrs.field(
        factory=dict, converter=_frozen_mapping
    )
    default_runtime: str = BUILTIN_RUNTIME
    data_root: str = DEFAULT_DATA_ROOT
    exec_root: str = DEFAULT_EXEC_ROOT
    hosts: tuple[str, ...] = (DEFAULT_HOST,)
    debug: bool = False
    labels: tuple[str, ...] = ()
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT


@attrs.frozen
class DaemonFlags:
    """Flags of `dockyard daemon` that override daemon.json. None means unset."""

    data_root: str | None = None
    exec_root: str | None = None
    hosts: tuple[str, ...] | None = None
    debug: bool | None = None


# Attribute name to daemon.json key, for renames and for error paths.
JSON_KEYS = {
    "runtime_args": "runtimeArgs",
    "default_runtime": "default-runtime",
    "data_root": "data-root",
    "exec_root": "exec-root",
    "shutdown_timeout": "shutdown-timeout",
}


def _strict(kind: type, name: str) -> Any:
    def structure(value: Any, _: Any) -> Any:
        # bool is an int subclass in Python, but not a number in JSON.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"expected {name}, got {_json_type(value)}")
        if isinstance(value, str) and not _encodable(value):
            # JSON escapes can spell lone surrogates, which no file name,
            # argument or script can carry.
            raise ValueError("expected valid Unicode text, got a lone surrogate escape")
        if isinstance(value, str) and "\x00" in value:
            # Neither a path nor a program argument can carry a NUL byte.
            raise ValueError("expected text without NUL characters")
        return value

    return structure


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), type(value).__name__)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(int, _strict(int, "an integer"))

    def strict_tuple(value: Any, _: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise TypeError(f"expected an array of strings, got {_json_type(value)}")
        return tuple(converter.structure(value, list[str]))

    converter.register_structure_hook_func(
        lambda kind: kind == tuple[str, ...], strict_tuple
    )

    def strict_runtimes(value: Any, _: Any) -> dict[str, RuntimeConfig]:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object of runtimes, got {_json_type(value)}")
        return converter.structure(value, dict[str, RuntimeConfig])

    converter.register_structure_hook_func(
        lambda kind: kind == Mapping[str, RuntimeConfig], strict_runtimes
    )
    for cls in (RuntimeConfig, DaemonConfig):
        renames: dict[str, Any] = {
            field.name: override(rename=JSON_KEYS[field.name])
            for field in attrs.fields(cls)
            if field.name in JSON_KEYS
        }
        converter.register_structure_hook(
            cls, _object_only(make_dict_structure_fn(cls, converter, **renames))
        )
        converter.register_unstructure_hook(
            cls, make_dict_unstructure_fn(cls, converter, **renames)
        )
    return converter


def _object_only(structure: Any) -> Any:
    def structure_object(value: Any, kind: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_json_type(value)}")
        return structure(value, kind)

    return structure_object


CONFIG_CONVERTER = _make_converter()


def parse_daemon_json(
    text: str, *, source: str, flags: DaemonFlags | None = None
) -> DaemonConfig:
    """Decode and validate daemon.json text, then apply the flags over it.

    `source` names the file in errors. A key given both in the file and as
    a flag is an error, as in dockerd.
    """
    if not text.strip():
        # A file truncated by an editor mid-write looks like this, so it is
        # rejected rather than read as "no runtimes", as dockerd rejects it.
        raise InvalidConfig(
            f"{source}: the file is empty. Write {{}} for the defaults; nothing "
            "was applied."
        )
    raw = _decode_json(text, source)
    if not isinstance(raw, dict):
        raise InvalidConfig(
            f"{source}: the top level must be a JSON object, got {_json_type(raw)}."
        )
    overrides = _flag_overrides(flags or DaemonFlags(), raw, source)
    _check_runtime_entries(raw.get("runtimes"), source)
    try:
        config = CONFIG_CONVERTER.structure(raw, DaemonConfig)
    except (ClassValidationError, IterableValidationError) as error:
        problems = "; ".join(_describe_errors(error, ""))
        raise InvalidConfig(
            f"{source}: {problems}. Fix the file; nothing was applied."
        ) from None
    config = attrs.evolve(config, **overrides)
    validate_config(config, source=source)
    return config


def _decode_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidConfig(
            f"{source}: invalid JSON at line {error.lineno} column {error.colno}: "
            f"{error.msg}. Fix the file; nothing was applied."
        ) from None
    except RecursionError:
        raise InvalidConfig(
            f"{source}: the JSON is nested too deeply to decode. Fix the file; "
            "nothing was applied."
        ) from None
    except ValueError as error:
        # Python's limit on the digits of an integer, for one.
        raise InvalidConfig(
            f"{source}: invalid JSON: {error}. Fix the file; nothing was applied."
        ) from None


def config_from_flags(flags: DaemonFlags) -> DaemonConfig:
    """Return the embedded defaults with the flags applied, for no daemon.json."""
    return parse_daemon_json("{}", source="flags", flags=flags)


def _flag_overrides(
    flags: DaemonFlags, raw: dict[str, Any], source: str
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    clashes: list[str] = []
    for field in attrs.fields(DaemonFlags):
        value = getattr(flags, field.name)
        if value is None:
            continue
        key = JSON_KEYS.get(field.name, field.name)
        if key in raw:
            clashes.append(f"{key} (from flag: {value!r}, from file: {raw[key]!r})")
        overrides[field.name] = value
    if clashes:
        raise InvalidConfig(
            f"{source}: these keys are given both as a flag and in the file: "
            f"{', '.join(clashes)}. Remove one of each."
        )
    return overrides


def _check_runtime_entries(runtimes: Any, source: str) -> None:
    """Reject dockerd runtime keys that select containerd shims, with the reason."""
    if not isinstance(runtimes, dict):
        return
    for name, entry in runtimes.items():
        if not isinstance(entry, dict):
            continue
        for key in _UNSUPPORTED_RUNTIME_KEYS:
            if key in entry:
                raise InvalidConfig(
                    f"{source}: runtimes.{name}.{key} is not supported: Dockyard "
                    "calls OCI runtimes directly, not containerd shims. Give the "
                    f"runtime binary as runtimes.{name}.path instead."
                )
        if "path" not in entry:
            raise InvalidConfig(
                f"{source}: runtimes.{name} has no path. Set runtimes.{name}.path "
                "to the runtime binary (an absolute path or a name on PATH)."
            )


def _describe_errors(error: BaseException, path: str) -> list[str]:
    """Flatten a cattrs error tree into messages with daemon.json key paths."""
    if isinstance(error, ForbiddenExtraKeysError):
        where = f" in {path}" if path else ""
        keys = ", ".join(sorted(error.extra_fields))
        return [f"unknown key{where}: {keys} (remove it; the README lists the keys)"]
    if not isinstance(error, ClassValidationError | IterableValidationError):
        return [f"{path or 'top level'}: {error}"]
    messages: list[str] = []
    with_notes, without_notes = error.group_exceptions()
    for inner, note in with_notes:
        messages.extend(_describe_errors(inner, _child_path(path, note)))
    for inner in without_notes:
        messages.extend(_describe_errors(inner, path))
    return messages


def _child_path(path: str, note: Any) -> str:
    if isinstance(note, IterableValidationNote) and isinstance(note.index, int):
        return f"{path}[{note.index}]"
    if isinstance(note, IterableValidationNote):
        key = str(note.index)
    else:
        key = JSON_KEYS.get(note.name, note.name)
    return f"{path}.{key}" if path else key


def validate_config(config: DaemonConfig, *, source: str) -> None:
    """Check the rules that types alone cannot express."""
    for name in config.runtimes:
        check_runtime_name(name, source=source)
    for name, runtime in config.runtimes.items():
        if not runtime.path:
            raise InvalidConfig(
                f"{source}: runtimes.{name}.path is empty. Set it to the runtime "
                "binary (an absolute path or a name on PATH)."
            )
        if "/" in runtime.path and not runtime.path.startswith("/"):
            raise InvalidConfig(
                f"{source}: runtimes.{name}.path {runtime.path!r} is a relative "
                "path. Give an absolute path, or a bare name to look up on PATH."
            )
    known = (BUILTIN_RUNTIME, *sorted(config.runtimes))
    if config.default_runtime not in known:
        raise InvalidConfig(
            f"{source}: default-runtime {config.default_runtime!r} names no "
            f"configured runtime. Use one of: {', '.join(known)}."
        )
    if not 0 <= config.shutdown_timeout <= MAX_SHUTDOWN_TIMEOUT:
        raise InvalidConfig(
            f"{source}: shutdown-timeout is {config.shutdown_timeout}; it must be "
            f"between 0 and {MAX_SHUTDOWN_TIMEOUT} seconds."
        )
    for index, label in enumerate(config.labels):
        if not _LABEL.fullmatch(label):
            raise InvalidConfig(
                f"{source}: labels[{index}] {label!r} is not of the form key=value."
            )
    for index, host in enumerate(config.hosts):
        if not host.startswith("unix://") or len(host) == len("unix://"):
            raise InvalidConfig(
                f"{source}: hosts[{index}] {host!r} is not supported. Dockyard "
                "listens on Unix sockets only: use unix:///path/to/socket."
            )


def check_runtime_name(name: str, *, source: str) -> None:
    """Reject names that cannot safely become a file name, and the built-in name."""
    if name == BUILTIN_RUNTIME:
        raise InvalidConfig(
            f"{source}: runtimes.{name}: the name {name!r} is reserved for the "
            "built-in runtime. Pick another name."
        )
    if len(name) > MAX_RUNTIME_NAME:
        raise InvalidConfig(
            f"{source}: runtime name {name[:32]!r}... is {len(name)} characters "
            f"long; the maximum is {MAX_RUNTIME_NAME}. Pick a shorter name."
        )
    if not name or not _RUNTIME_NAME.fullmatch(name) or ".." in name:
        raise InvalidConfig(
            f"{source}: runtime name {name!r} is invalid: it must not be empty, "
            "start with a dot, or contain '/' or '..'. Use letters, digits and "
            "'_', '-', '+', '.'."
        )


def config_to_json(config: DaemonConfig) -> dict[str, Any]:
    """Encode a configuration with daemon.json's key names."""
    encoded: dict[str, Any] = CONFIG_CONVERTER.unstructure(config)
    return encoded
