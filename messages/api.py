"""The Docker Engine API's JSON: request bodies decoded, responses built.

Pure functions only. Decoding turns a request body (PascalCase keys, as
the docker CLI sends them) into the daemon's own request types. Unknown
keys are ignored, because the CLI sends many fields Dockyard does not use.
A value of the wrong type raises InvalidRequest naming the field.
Building turns records into the JSON shapes that the docker CLI decodes
into its Go structs, so every field keeps the type Docker gives it.
Anything that depends on the time takes `now` as an argument.

Request input is hostile until checked: no JSON document, query value or
path may reach a Python limit (recursion depth, the integer digit limit,
float overflow) and surface as a 500. Error messages quote a client's
value cut to MAX_QUOTED_CHARS.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from messages import records
from messages.errors import InvalidRequest
from messages.events import Event
from messages.execspec import ExecOptions
from messages.images import ImageRecord, ImageRemoval
from messages.records import ContainerRecord, ContainerState
from messages.reload import ReloadOutcome
from messages.requests import CreateContainer
from messages.stream import STDERR, STDOUT, decode_frames, encode_frame

# The Engine API version Dockyard implements. Docker CLIs negotiate down to it.
API_VERSION = "1.43"
# The oldest version dockerd 23+ still accepts; older clients are rejected.
MIN_API_VERSION = "1.24"
# "/v1.43/containers/json": the optional version prefix of every path.
VERSION_PREFIX = re.compile(r"^/v(?P<version>[0-9]+\.[0-9]+)(?=/)")
# The maximum digits in one part of an API version. A longer part is no
# version, and int() would raise past 4300 digits.
MAX_VERSION_PART_DIGITS = 4

# Go's zero time.Time, which Docker writes for a time that has not happened.
ZERO_TIME = "0001-01-01T00:00:00Z"
# Records keep Unix time as a float, which near today resolves about 0.2 µs.
# So times are written to the microsecond, because finer digits are noise.
MICROSECONDS = 1_000_000

# Query values that Docker reads as false (httputils.BoolValue).
FALSE_QUERY_VALUES = ("", "0", "no", "false", "none")

# The stop timeout that means "no SIGKILL deadline", as in dockerd.
WAIT_FOREVER = -1
# The maximum stop timeout a request may set, in seconds: one day. A longer
# wait is better requested with WAIT_FOREVER.
MAX_STOP_TIMEOUT = 24 * 60 * 60
# The latest Unix time a query may give: the last second of year 9999,
# the last year that RFC 3339 can write.
MAX_TIMESTAMP = 253_402_300_799
# "1700000000" or "1700000000.000000001", as the docker CLI sends times.
TIMESTAMP = re.compile(r"[0-9]+(\.[0-9]+)?")
# The signal names that runc 1.1 accepts: it looks names up with
# golang.org/x/sys/unix.SignalNum, whose Linux table has the canonical name
# of each standard signal. Python's signal.Signals has the same names, plus
# aliases such as SIGIOT (which iteration skips) and the real-time
# SIGRTMIN and SIGRTMAX, which runc takes only as numbers.
SIGNAL_NAMES = frozenset(
    member.name
    for member in signal.Signals
    if member.name not in ("SIGRTMIN", "SIGRTMAX")
)
# Linux signal numbers run from 1 to 64, real-time ones included.
MAX_SIGNAL_NUMBER = 64
# The maximum nesting of client JSON. Docker's create body nests about seven
# levels at its deepest (HostConfig.Mounts[].VolumeOptions.DriverConfig),
# and the limit keeps recursive code (cattrs, repr) far from Python's
# recursion limit.
MAX_JSON_DEPTH = 32
# Go's int64, the widest integer in Docker's request types.
MIN_JSON_INTEGER = -(2**63)
MAX_JSON_INTEGER = 2**63 - 1
# The maximum length of a client's value quoted in an error message.
MAX_QUOTED_CHARS = 64

# Filter keys accepted by each listing endpoint.
CONTAINER_FILTERS = ("id", "name", "status", "label")
EVENT_FILTERS = ("type", "event", "container", "image", "label")


# --- Decoding request bodies ----------------------------------------------------------


@attrs.frozen
class _HostConfigBody:
    runtime: str = ""
    privileged: bool = False
    security_opt: tuple[str, ...] | None = None
    auto_remove: bool = False


@attrs.frozen
class _CreateBody:
    image: str = ""
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] | None = None
    hostname: str = ""
    stop_signal: str = ""
    stop_timeout: int | None = None
    tty: bool = False
    open_stdin: bool = False
    host_config: _HostConfigBody | None = None


@attrs.frozen
class _ExecBody:
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    privileged: bool = False
    attach_stdin: bool = False
    tty: bool = False


@attrs.frozen
class ExecStart:
    """The body of `POST /exec/{id}/start`."""

    detach: bool = False
    tty: bool = False


_STOP_TIMEOUT_RANGE = (
    f"Give whole seconds from 0 to {MAX_STOP_TIMEOUT}, or {WAIT_FOREVER} to "
    "wait for the container without a deadline."
)


def _stop_timeout_valid(seconds: int) -> bool:
    return WAIT_FOREVER <= seconds <= MAX_STOP_TIMEOUT


def _pascal_case(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _type_error(expected: str, value: Any) -> TypeError:
    return TypeError(f"expected {expected}, got {_json_type(value)} {_quote(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "number", float: "number", str: "string"}
    names.update({list: "array", dict: "object"})
    return names.get(type(value), type(value).__name__)


def _structure_str(value: Any, _type: object) -> str:
    if not isinstance(value, str):
        raise _type_error("a string", value)
    return value


def _structure_bool(value: Any, _type: object) -> bool:
    if not isinstance(value, bool):
        raise _type_error("a boolean", value)
    return value


def _structure_int(value: Any, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error("an integer", value)
    return value


def _structure_strings(value: Any, _type: object) -> tuple[str, ...]:
    # Checked here because cattrs alone turns the string "sh" into ("s", "h").
    if not isinstance(value, list):
        raise _type_error("an array of strings", value)
    for item in value:
        if not isinstance(item, str):
            raise _type_error("an array of strings", value)
    return tuple(value)


def _structure_labels(value: Any, _type: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(item, str) for item in value.values()
    ):
        raise _type_error("an object of strings", value)
    return dict(value)


def _make_body_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook_func(
        lambda kind: kind == tuple[str, ...], _structure_strings
    )
    converter.register_structure_hook_func(
        lambda kind: kind == dict[str, str], _structure_labels
    )
    for body_class in (_HostConfigBody, _CreateBody, _ExecBody, ExecStart):
        renames: dict[str, Any] = {
            field.name: override(rename=_pascal_case(field.name))
            for field in attrs.fields(body_class)
        }
        structure = make_dict_structure_fn(body_class, converter, **renames)
        converter.register_structure_hook(body_class, _objects_only(structure))
    return converter


def _objects_only(structure: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # The generated hook only tests `key in value`, which a list also passes.
    def structure_object(value: Any, kind: Any) -> Any:
        if not isinstance(value, dict):
            raise _type_error("an object", value)
        return structure(value, kind)

    return structure_object


# The converter for request bodies: PascalCase keys, strict types, extras ignored.
body_converter = _make_body_converter()


def _error_lines(error: BaseException, path: str) -> Iterator[str]:
    if isinstance(error, cattrs.BaseValidationError):
        for inner in error.exceptions:
            step = ""
            for note in getattr(inner, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    step = f".{_pascal_case(note.name)}"
                elif isinstance(note, IterableValidationNote):
                    step = f"[{note.index}]"
            yield from _error_lines(inner, path + step)
    else:
        yield f"{path.removeprefix('.') or 'body'}: {error}"


def _structure_body(body: Any, kind: type[Any], what: str) -> Any:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"invalid {what} request: the body must be a JSON object, got "
            f"{_json_type(body)}"
        )
    try:
        return body_converter.structure(body, kind)
    except (cattrs.BaseValidationError, TypeError, ValueError) as error:
        problems = "; ".join(_error_lines(error, ""))
        raise InvalidRequest(
            f"invalid {what} request: {problems}. Fix the field and retry."
        ) from None


def load_json(data: bytes | str) -> Any:
    """Parse JSON from a client.

    Raises ValueError, with the reason as its message, for invalid JSON,
    for NaN and Infinity (which JSON lacks), for a number that overflows a
    float or an int64, and for nesting deeper than MAX_JSON_DEPTH.
    """
    too_deep = f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        document = json.loads(
            data,
            parse_int=_parse_json_integer,
            parse_float=_parse_json_float,
            parse_constant=_reject_json_constant,
        )
    except RecursionError:
        raise ValueError(too_deep) from None
    if _nesting_exceeds(document, MAX_JSON_DEPTH):
        raise ValueError(too_deep)
    return document


def _parse_json_integer(text: str) -> int:
    # Checked before int(), which raises past 4300 digits.
    digits = text.removeprefix("-")
    if len(digits) <= len(str(MAX_JSON_INTEGER)):
        value = int(text)
        if MIN_JSON_INTEGER <= value <= MAX_JSON_INTEGER:
            return value
    raise ValueError(f"the integer {quote_value(text)} does not fit in 64 bits")


def _parse_json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {quote_value(text)} is too large")
    return value


def _reject_json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON value")


def _nesting_exceeds(document: Any, limit: int) -> bool:
    # A loop with its own stack, because recursion is what the limit prevents.
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def quote_value(text: str) -> str:
    """Quote a client's string for an error message, cut to MAX_QUOTED_CHARS."""
    if len(text) <= MAX_QUOTED_CHARS:
        return repr(text)
    return f"{text[:MAX_QUOTED_CHARS]!r}... ({len(text)} characters)"


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return quote_value(value)
    text = repr(value)
    if len(text) <= MAX_QUOTED_CHARS:
        return text
    return f"{text[:MAX_QUOTED_CHARS]}... ({len(text)} characters)"


def decode_create_container(body: Any, *, name: str = "") -> CreateContainer:
    """Decode the body of `POST /containers/create`; `name` is its query value."""
    decoded: _CreateBody = _structure_body(body, _CreateBody, "create container")
    _reject_ignored_options(body or {})
    if not decoded.image:
        raise InvalidRequest(
            "invalid create container request: Image is missing. Give the image to run."
        )
    if decoded.tty:
        raise InvalidRequest("TTY is not supported; run the container without -t")
    if decoded.open_stdin:
        raise InvalidRequest("stdin is not supported; run the container without -i")
    stop_signal = _decode_stop_signal(decoded.stop_signal)
    stop_timeout = decoded.stop_timeout
    if stop_timeout is not None and not _stop_timeout_valid(stop_timeout):
        raise InvalidRequest(
            f"invalid create container request: StopTimeout {stop_timeout} is "
            f"out of range. {_STOP_TIMEOUT_RANGE}"
        )

    host = decoded.host_config or _HostConfigBody()
    entrypoint = decoded.entrypoint
    # `--entrypoint ""` arrives as [""]: it clears the image's entrypoint.
    if entrypoint is not None and all(not word for word in entrypoint):
        entrypoint = ()
    return CreateContainer(
        image=decoded.image,
        name=name,
        # An empty Cmd means the image's command, as in dockerd.
        cmd=decoded.cmd or None,
        entrypoint=entrypoint,
        env=decoded.env or (),
        working_dir=decoded.working_dir,
        user=decoded.user,
        hostname=decoded.hostname,
        labels=decoded.labels or {},
        runtime=host.runtime,
        privileged=host.privileged,
        security_opt=host.security_opt or (),
        auto_remove=host.auto_remove,
        stop_signal=stop_signal,
        stop_timeout=stop_timeout,
    )


def _is_set(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _is_set_pids_limit(value: Any) -> bool:
    # 0 and -1 both mean no limit.
    return value not in (None, 0, -1)


def _is_set_restart_policy(value: Any) -> bool:
    if isinstance(value, dict):
        return _field(value, "Name") not in (None, "", "no")
    return _is_set(value)


def _is_set_cgroupns_mode(value: Any) -> bool:
    return value not in (None, "", "private")


def _is_set_log_config(value: Any) -> bool:
    # Dockyard keeps every container's output in its own log file.
    if isinstance(value, dict):
        return _field(value, "Type") not in (None, "", "json-file") or _is_set(
            _field(value, "Config")
        )
    return _is_set(value)


def _is_set_isolation(value: Any) -> bool:
    return value not in (None, "", "default")


def _is_set_healthcheck(value: Any) -> bool:
    # ["NONE"] turns off an image's health check, which Dockyard never runs.
    if isinstance(value, dict):
        return _field(value, "Test") not in (None, [], ["NONE"])
    return _is_set(value)


def _is_set_endpoints(value: Any) -> bool:
    # Only the network modes let through for NetworkMode, with no settings.
    if not isinstance(value, dict):
        return _is_set(value)
    return any(
        name not in ("none", "bridge", "default") or _is_set_settings(settings)
        for name, settings in value.items()
    )


def _is_set_settings(settings: Any) -> bool:
    # The docker CLI sends every endpoint field, empty unless an option set it.
    if isinstance(settings, dict):
        return any(_is_set(value) for value in settings.values())
    return _is_set(settings)


def _field(document: dict[str, Any], name: str) -> Any:
    """Return the value of key `name` in any letter case, as dockerd reads it."""
    for key, value in document.items():
        if key.lower() == name.lower():
            return value
    return None


def _is_set_ipc_mode(value: Any) -> bool:
    return value not in (None, "", "private")


def _is_set_network_mode(value: Any) -> bool:
    # A container gets a network namespace with only a loopback interface,
    # which is what `none` requests. The default modes are let through with
    # it too, so that a plain `docker run` works.
    return value not in (None, "", "default", "bridge", "none")


# HostConfig fields that Dockyard would ignore, with the docker CLI option
# that sets each and the test for a value other than the default.
_IGNORED_HOST_CONFIG: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "Binds": ("-v/--volume", _is_set),
    "Mounts": ("--mount", _is_set),
    "VolumesFrom": ("--volumes-from", _is_set),
    "Tmpfs": ("--tmpfs", _is_set),
    "ReadonlyRootfs": ("--read-only", _is_set),
    "CapAdd": ("--cap-add", _is_set),
    "CapDrop": ("--cap-drop", _is_set),
    "Devices": ("--device", _is_set),
    "DeviceRequests": ("--gpus", _is_set),
    "PortBindings": ("-p/--publish", _is_set),
    "PublishAllPorts": ("-P/--publish-all", _is_set),
    "Links": ("--link", _is_set),
    "Dns": ("--dns", _is_set),
    "DnsSearch": ("--dns-search", _is_set),
    "DnsOptions": ("--dns-option", _is_set),
    "ExtraHosts": ("--add-host", _is_set),
    "Memory": ("-m/--memory", _is_set),
    "MemorySwap": ("--memory-swap", _is_set),
    "MemoryReservation": ("--memory-reservation", _is_set),
    "NanoCpus": ("--cpus", _is_set),
    "CpuShares": ("-c/--cpu-shares", _is_set),
    "CpuPeriod": ("--cpu-period", _is_set),
    "CpuQuota": ("--cpu-quota", _is_set),
    "CpusetCpus": ("--cpuset-cpus", _is_set),
    "CpusetMems": ("--cpuset-mems", _is_set),
    "BlkioWeight": ("--blkio-weight", _is_set),
    "PidsLimit": ("--pids-limit", _is_set_pids_limit),
    "Ulimits": ("--ulimit", _is_set),
    "OomKillDisable": ("--oom-kill-disable", _is_set),
    "OomScoreAdj": ("--oom-score-adj", _is_set),
    "ShmSize": ("--shm-size", _is_set),
    "Sysctls": ("--sysctl", _is_set),
    "GroupAdd": ("--group-add", _is_set),
    "Init": ("--init", _is_set),
    "RestartPolicy": ("--restart", _is_set_restart_policy),
    "PidMode": ("--pid", _is_set),
    "IpcMode": ("--ipc", _is_set_ipc_mode),
    "UTSMode": ("--uts", _is_set),
    "UsernsMode": ("--userns", _is_set),
    "CgroupParent": ("--cgroup-parent", _is_set),
    "NetworkMode": ("--network", _is_set_network_mode),
    "CgroupnsMode": ("--cgroupns", _is_set_cgroupns_mode),
    "LogConfig": ("--log-driver/--log-opt", _is_set_log_config),
    "DeviceCgroupRules": ("--device-cgroup-rule", _is_set),
    "BlkioWeightDevice": ("--blkio-weight-device", _is_set),
    "BlkioDeviceReadBps": ("--device-read-bps", _is_set),
    "BlkioDeviceWriteBps": ("--device-write-bps", _is_set),
    "BlkioDeviceReadIOps": ("--device-read-iops", _is_set),
    "BlkioDeviceWriteIOps": ("--device-write-iops", _is_set),
    # -1, which the docker CLI sends by default, keeps the host's value.
    "MemorySwappiness": ("--memory-swappiness", lambda value: value not in (None, -1)),
    "KernelMemory": ("--kernel-memory", _is_set),
    "CpuRealtimeRuntime": ("--cpu-rt-runtime", _is_set),
    "CpuRealtimePeriod": ("--cpu-rt-period", _is_set),
    "StorageOpt": ("--storage-opt", _is_set),
    "Isolation": ("--isolation", _is_set_isolation),
    "VolumeDriver": ("--volume-driver", _is_set),
    "Annotations": ("--annotation", _is_set),
}

# Fields of the create body itself that Dockyard would ignore, as above.
_IGNORED_CONFIG: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "Volumes": ("-v/--volume", _is_set),
    "ExposedPorts": ("--expose", _is_set),
    "Domainname": ("--domainname", _is_set),
    "Healthcheck": ("--health-cmd", _is_set_healthcheck),
}


def _reject_ignored_options(body: dict[str, Any]) -> None:
    """Raise InvalidRequest naming each option of a create body that Dockyard
    would otherwise ignore, such as a volume, a capability or a limit.

    Keys match in any letter case, as dockerd matches them.
    """
    ignored = _set_fields(body, _IGNORED_CONFIG, "")
    host_config = _field(body, "HostConfig")
    if isinstance(host_config, dict):
        ignored.extend(_set_fields(host_config, _IGNORED_HOST_CONFIG, "HostConfig."))
    networking = _field(body, "NetworkingConfig")
    if isinstance(networking, dict) and _is_set_endpoints(
        _field(networking, "EndpointsConfig")
    ):
        ignored.append("--network/--ip (NetworkingConfig.EndpointsConfig)")
    if ignored:
        them = "it" if len(ignored) == 1 else "them"
        raise InvalidRequest(
            f"{', '.join(ignored)}: not supported by Dockyard, which would "
            f"run the container without {them}. Run the container without {them}."
        )


def _set_fields(
    document: dict[str, Any],
    table: dict[str, tuple[str, Callable[[Any], bool]]],
    prefix: str,
) -> list[str]:
    """Return "option (field)" for each field of `table` set in `document`."""
    lowered = {key.lower(): value for key, value in document.items()}
    return [
        f"{option} ({prefix}{field})"
        for field, (option, is_set) in table.items()
        if is_set(lowered.get(field.lower()))
    ]


def _decode_stop_signal(value: str) -> str:
    # Empty means the default, which the container config fills in.
    if not value:
        return value
    try:
        return parse_signal(value)
    except InvalidRequest as error:
        raise InvalidRequest(
            f"invalid create container request: StopSignal: {error}"
        ) from None


def decode_exec_options(body: Any) -> ExecOptions:
    """Decode the body of `POST /containers/{id}/exec`."""
    decoded: _ExecBody = _structure_body(body, _ExecBody, "exec")
    if decoded.tty:
        raise InvalidRequest("TTY is not supported; run docker exec without -t")
    if decoded.attach_stdin:
        raise InvalidRequest("stdin is not supported; run docker exec without -i")
    if not decoded.cmd:
        raise InvalidRequest(
            "invalid exec request: Cmd is missing or empty. Give the program to run."
        )
    return ExecOptions(
        cmd=decoded.cmd,
        env=decoded.env or (),
        working_dir=decoded.working_dir or None,
        user=decoded.user,
        privileged=decoded.privileged,
    )


def decode_exec_start(body: Any) -> ExecStart:
    """Decode the body of `POST /exec/{id}/start`; an empty body is all defaults."""
    decoded: ExecStart = _structure_body(body, ExecStart, "exec start")
    if decoded.tty:
        raise InvalidRequest("TTY is not supported; run docker exec without -t")
    return decoded


# --- Query parameters, versions, signals and times ------------------------------------

Query = Mapping[str, Sequence[str]]


def query_value(query: Query, name: str) -> str | None:
    """Return the last value of a query parameter, or None when it is absent."""
    values = query.get(name)
    return values[-1] if values else None


def query_bool(query: Query, name: str, default: bool = False) -> bool:
    """Read a query flag as dockerd does: "", 0, no, false and none are false."""
    value = query_value(query, name)
    if value is None:
        return default
    return value.strip().lower() not in FALSE_QUERY_VALUES


def query_int(query: Query, name: str) -> int | None:
    """Read an integer query parameter of at most 18 digits; None when absent."""
    value = query_value(query, name)
    if value is None or value == "":
        return None
    if re.fullmatch(r"-?[0-9]{1,18}", value) is None:
        raise InvalidRequest(
            f"invalid query parameter {name}={quote_value(value)}: expected an "
            "integer of at most 18 digits"
        )
    return int(value)


def query_stop_timeout(query: Query, name: str) -> int | None:
    """Read a stop timeout (`docker stop -t`); -1 waits forever, None is the default.

    Raises InvalidRequest outside WAIT_FOREVER..MAX_STOP_TIMEOUT.
    """
    seconds = query_int(query, name)
    if seconds is not None and not _stop_timeout_valid(seconds):
        raise InvalidRequest(
            f"invalid query parameter {name}={seconds}: out of range. "
            f"{_STOP_TIMEOUT_RANGE}"
        )
    return seconds


def split_api_version(path: str) -> tuple[str | None, str]:
    """Split "/v1.43/info" into ("1.43", "/info"); no prefix gives (None, path)."""
    match = VERSION_PREFIX.match(path)
    if match is None:
        return None, path
    return match.group("version"), path[match.end() :]


def _version_key(version: str) -> tuple[int, ...]:
    parts = version.split(".")
    if any(len(part) > MAX_VERSION_PART_DIGITS for part in parts):
        raise InvalidRequest(
            f"invalid API version {quote_value(version)}: expected MAJOR.MINOR "
            f"such as {API_VERSION}. Set DOCKER_API_VERSION to a real version."
        )
    return tuple(int(part) for part in parts)


def check_api_version(version: str) -> None:
    """Raise InvalidRequest for a version outside MIN_API_VERSION..API_VERSION."""
    if _version_key(version) > _version_key(API_VERSION):
        raise InvalidRequest(
            f"client version {version} is too new. Maximum supported API version "
            f"is {API_VERSION}: unset DOCKER_API_VERSION or set it to {API_VERSION}"
        )
    if _version_key(version) < _version_key(MIN_API_VERSION):
        raise InvalidRequest(
            f"client version {version} is too old. Minimum supported API version "
            f"is {MIN_API_VERSION}: upgrade your client"
        )


def version_at_least(version: str | None, minimum: str) -> bool:
    """Return whether an API version is `minimum` or newer; None is the newest."""
    return version is None or _version_key(version) >= _version_key(minimum)


def parse_signal(value: str) -> str:
    """Normalize a signal given as "KILL", "SIGKILL" or "9" to a form runc takes.

    Names become "SIGKILL", and numbers become plain decimal numbers.
    Raises InvalidRequest for a name not in SIGNAL_NAMES and for a number
    outside 1..MAX_SIGNAL_NUMBER.
    """
    text = value.strip().upper()
    if re.fullmatch(r"[0-9]{1,3}", text):
        if 1 <= int(text) <= MAX_SIGNAL_NUMBER:
            return str(int(text))
    else:
        name = text if text.startswith("SIG") else f"SIG{text}"
        if name in SIGNAL_NAMES:
            return name
    raise InvalidRequest(
        f"invalid signal {quote_value(value)}: give a name such as SIGTERM or "
        f"KILL, or a number from 1 to {MAX_SIGNAL_NUMBER}"
    )


def parse_timestamp(value: str, name: str) -> float:
    """Parse a Unix time as the docker CLI sends it ("1700000000.000000001").

    Raises InvalidRequest for any other form and for a time past
    MAX_TIMESTAMP, so the result is finite and not negative.
    """
    if TIMESTAMP.fullmatch(value) is not None:
        seconds = float(value)
        if seconds <= MAX_TIMESTAMP:
            return seconds
    raise InvalidRequest(
        f"invalid query parameter {name}={quote_value(value)}: expected seconds "
        f"since the Unix epoch up to {MAX_TIMESTAMP}, such as 1700000000.5"
    )


def rfc3339_nano(seconds: float) -> str:
    """Format Unix time as Go's RFC3339Nano does: UTC, trailing zeros dropped."""
    if seconds <= 0:
        return ZERO_TIME
    whole = int(seconds)
    microseconds = round((seconds - whole) * MICROSECONDS)
    if microseconds == MICROSECONDS:
        whole, microseconds = whole + 1, 0
    moment = datetime.datetime.fromtimestamp(whole, datetime.UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{microseconds:06d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def human_duration(seconds: float) -> str:
    """Describe an elapsed time as `docker ps` does ("3 seconds", "About an hour")."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def container_status(state: ContainerState, *, now: float) -> str:
    """Format the STATUS column of `docker ps`: "Up 3 seconds", "Exited (0) ..."."""
    if state.status == records.RUNNING:
        return f"Up {human_duration(now - state.started_at)}"
    if state.status == records.EXITED:
        if state.finished_at <= 0:
            return f"Exited ({state.exit_code})"
        ago = human_duration(now - state.finished_at)
        return f"Exited ({state.exit_code}) {ago} ago"
    if state.status == records.REMOVING:
        return "Removal In Progress"
    return "Created"


# --- Filters --------------------------------------------------------------------------

Filters = Mapping[str, tuple[str, ...]]


def parse_filters(text: str | None, allowed: Sequence[str]) -> Filters:
    """Decode the `filters` query parameter.

    Docker clients send {"key": {"value": true}}; {"key": ["value"]} is also
    accepted. Raises InvalidRequest for bad JSON or a key not in `allowed`.
    """
    if not text:
        return {}
    try:
        document = load_json(text)
    except ValueError as error:
        raise InvalidRequest(f"invalid filters {quote_value(text)}: {error}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(
            f"invalid filters {quote_value(text)}: expected a JSON object"
        )
    filters: dict[str, tuple[str, ...]] = {}
    for key, values in document.items():
        if key not in allowed:
            raise InvalidRequest(
                f"invalid filter {quote_value(key)}: supported filters are "
                f"{', '.join(allowed)}"
            )
        if isinstance(values, dict):
            values = [value for value, enabled in values.items() if enabled]
        if not isinstance(values, list) or not all(
            isinstance(value, str) for value in values
        ):
            raise InvalidRequest(
                f"invalid filter {quote_value(key)}: expected a list of strings, "
                f"got {_quote(values)}"
            )
        filters[key] = tuple(values)
    return filters


def _labels_match(labels: Mapping[str, str], wanted: Iterable[str]) -> bool:
    """Return whether `labels` has every "key" or "key=value" in `wanted`."""
    for condition in wanted:
        key, equals, value = condition.partition("=")
        if key not in labels or (equals and labels[key] != value):
            return False
    return True


def container_matches(record: ContainerRecord, filters: Filters) -> bool:
    """Apply `docker ps --filter` semantics: any value of a key, every key."""
    if "id" in filters and not any(record.id.startswith(v) for v in filters["id"]):
        return False
    if "name" in filters and not any(
        value.removeprefix("/") in record.name for value in filters["name"]
    ):
        return False
    if "status" in filters and record.state.status not in filters["status"]:
        return False
    return "label" not in filters or _labels_match(
        record.config.labels, filters["label"]
    )


def event_matches(event: Event, filters: Filters) -> bool:
    """Apply `docker events --filter` semantics: any value of a key, every key."""
    if "type" in filters and event.type not in filters["type"]:
        return False
    if "event" in filters and event.action not in filters["event"]:
        return False
    if "container" in filters:
        if event.type != "container":
            return False
        name = event.attributes.get("name", "")
        if not any(
            event.actor_id.startswith(value) or value == name
            for value in filters["container"]
        ):
            return False
    if "image" in filters:
        image = event.attributes.get("image", event.attributes.get("name", ""))
        if not any(value in (image, event.actor_id) for value in filters["image"]):
            return False
    return "label" not in filters or _labels_match(event.attributes, filters["label"])


# --- Logs -----------------------------------------------------------------------------


def parse_tail(value: str | None) -> int | None:
    """Decode `tail`: "all" or absent is None (everything), else a line count."""
    if value is None or value in ("", "all"):
        return None
    if re.fullmatch(r"[0-9]{1,18}", value) is None:
        raise InvalidRequest(
            f"invalid query parameter tail={quote_value(value)}: give a number "
            "of lines or all"
        )
    return int(value)


def select_log_frames(
    data: bytes, *, stdout: bool, stderr: bool, tail: int | None = None
) -> bytes:
    """Keep the frames of the wanted streams, then the last `tail` lines of them.

    A frame that ends mid-line counts as a line of its own for `tail`,
    because the log does not record where a line was split.
    """
    wanted = {STDOUT} if stdout else set()
    if stderr:
        wanted.add(STDERR)
    frames = [(s, payload) for s, payload in decode_frames(data) if s in wanted]
    if tail is None:
        return b"".join(encode_frame(s, payload) for s, payload in frames)
    lines = [
        (s, line) for s, payload in frames for line in payload.splitlines(keepends=True)
    ]
    kept = lines[len(lines) - tail :] if tail else []
    return b"".join(encode_frame(s, line) for s, line in kept)


# --- Response bodies ------------------------------------------------------------------


def container_summary(record: ContainerRecord, *, now: float) -> dict[str, Any]:
    """Build one entry of `GET /containers/json`, as `docker ps` reads it."""
    config = record.config
    return {
        "Id": record.id,
        "Names": [f"/{record.name}"],
        "Image": config.image,
        "ImageID": config.image_id,
        "Command": " ".join(config.args),
        "Created": int(record.created),
        "Ports": [],
        "Labels": dict(config.labels),
        "State": record.state.status,
        "Status": container_status(record.state, now=now),
        "HostConfig": {"NetworkMode": "none"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


def container_inspect(record: ContainerRecord) -> dict[str, Any]:
    """Build the body of `GET /containers/{id}/json`, plus the lock-in section."""
    config = record.config
    state = record.state
    args = config.args
    lockin = record.lockin
    dockyard = None
    if lockin is not None:
        dockyard = {
            "Runtime": lockin.name,
            "RuntimeBinary": lockin.binary,
            "RuntimePath": lockin.path,
            "Generation": lockin.generation,
        }
    return {
        "Id": record.id,
        "Name": f"/{record.name}",
        "Created": rfc3339_nano(record.created),
        "Path": args[0] if args else "",
        "Args": list(args[1:]),
        "State": {
            "Status": state.status,
            "Running": state.status == records.RUNNING,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": rfc3339_nano(state.started_at),
            "FinishedAt": rfc3339_nano(state.finished_at),
        },
        "Image": config.image_id,
        "Platform": "linux",
        "RestartCount": 0,
        "AppArmorProfile": lockin.apparmor_profile if lockin is not None else "",
        "ExecIDs": None,
        "Config": {
            "Hostname": config.hostname or record.id[:12],
            "User": config.user,
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": list(config.env),
            "Cmd": list(config.cmd),
            "Image": config.image,
            "WorkingDir": config.working_dir,
            "Entrypoint": list(config.entrypoint) or None,
            "Labels": dict(config.labels),
            "StopSignal": config.stop_signal,
            "StopTimeout": config.stop_timeout,
        },
        "HostConfig": {
            "Runtime": config.runtime or (lockin.name if lockin is not None else ""),
            "Privileged": config.privileged,
            "SecurityOpt": _security_opt(config.apparmor_profile),
            "AutoRemove": config.auto_remove,
            "NetworkMode": "none",
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        },
        "Mounts": [],
        "NetworkSettings": {"Networks": {}},
        "Dockyard": dockyard,
    }


def _security_opt(apparmor_profile: str | None) -> list[str] | None:
    return None if apparmor_profile is None else [f"apparmor={apparmor_profile}"]


def image_summary(image: ImageRecord) -> dict[str, Any]:
    """Build one entry of `GET /images/json`, as `docker images` reads it."""
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": list(image.repo_tags),
        "RepoDigests": [],
        "Created": int(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "VirtualSize": image.size,
        "Labels": {},
        # -1 means "not computed", as dockerd reports it without ?shared-size.
        "Containers": -1,
    }


def image_removal_json(removal: ImageRemoval) -> list[dict[str, str]]:
    """Build the body of `DELETE /images/{name}`, as `docker rmi` prints it."""
    return [{"Untagged": tag} for tag in removal.untagged] + [
        {"Deleted": image_id} for image_id in removal.deleted
    ]


def image_inspect(image: ImageRecord) -> dict[str, Any]:
    """Build the body of `GET /images/{name}/json`."""
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": rfc3339_nano(image.created),
        "Config": {
            "Env": list(image.env),
            "Cmd": list(image.cmd) or None,
            "Entrypoint": list(image.entrypoint) or None,
            "WorkingDir": image.working_dir,
            "User": image.user,
            "Labels": None,
        },
        "Architecture": "",
        "Os": "linux",
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": []},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def exec_inspect(
    *,
    exec_id: str,
    container_id: str,
    options: ExecOptions,
    running: bool,
    exit_code: int | None,
    pid: int,
) -> dict[str, Any]:
    """Build the body of `GET /exec/{id}/json`. ExitCode is null until the end."""
    return {
        "ID": exec_id,
        "Running": running,
        "ExitCode": exit_code,
        "ProcessConfig": {
            "tty": False,
            "entrypoint": options.cmd[0] if options.cmd else "",
            "arguments": list(options.cmd[1:]),
            "privileged": options.privileged,
            "user": options.user,
        },
        "OpenStdin": False,
        "OpenStderr": True,
        "OpenStdout": True,
        "CanRemove": False,
        "ContainerID": container_id,
        "DetachKeys": "",
        "Pid": pid,
    }


def reload_outcome_json(outcome: ReloadOutcome) -> dict[str, Any]:
    """Build the body of a successful `POST /dockyard/reload`."""
    return {
        "Generation": outcome.generation,
        "Changed": list(outcome.changed),
        "RestartRequired": list(outcome.restart_required),
    }


def error_json(message: str) -> dict[str, Any]:
    """Build the body of an error response, as dockerd writes it."""
    return {"message": message}
