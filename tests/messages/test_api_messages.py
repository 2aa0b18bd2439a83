"""Engine API JSON: request decoding, response shapes, times, filters, log frames."""

from __future__ import annotations

import json
from typing import Any

import pytest

from messages import api, records
from messages.errors import InvalidRequest
from messages.events import Event
from messages.execspec import ExecOptions
from messages.images import ImageRecord
from messages.records import (
    ContainerConfig,
    ContainerRecord,
    ContainerState,
    RuntimeLockIn,
)
from messages.stream import STDERR, STDOUT, decode_frames, encode_frame

IMAGE_ID = "sha256:" + "ab" * 32
CONTAINER_ID = "c0ffee" + "0" * 58

# --- Create container bodies ----------------------------------------------------------


def test_create_decodes_fields_the_cli_sends() -> None:
    body = {
        "Hostname": "web",
        "User": "app",
        "AttachStdout": True,
        "Env": ["A=1", "B=2"],
        "Cmd": ["echo", "hi"],
        "Image": "busybox",
        "WorkingDir": "/srv",
        "Entrypoint": None,
        "Labels": {"tier": "front"},
        "StopSignal": "SIGINT",
        "StopTimeout": 4,
        "HostConfig": {
            "Runtime": "crun",
            "Privileged": True,
            "SecurityOpt": ["apparmor=custom"],
            "AutoRemove": True,
            "NetworkMode": "default",
        },
        "NetworkingConfig": {"EndpointsConfig": {}},
        "Volumes": {},
    }
    request = api.decode_create_container(body, name="web1")
    assert request.image == "busybox"
    assert request.name == "web1"
    assert request.cmd == ("echo", "hi")
    assert request.entrypoint is None
    assert request.env == ("A=1", "B=2")
    assert request.working_dir == "/srv"
    assert request.user == "app"
    assert request.hostname == "web"
    assert dict(request.labels) == {"tier": "front"}
    assert request.stop_signal == "SIGINT"
    assert request.stop_timeout == 4
    assert request.runtime == "crun"
    assert request.privileged is True
    assert request.security_opt == ("apparmor=custom",)
    assert request.auto_remove is True


def test_create_minimal_body_takes_defaults() -> None:
    request = api.decode_create_container({"Image": "busybox"})
    assert request.cmd is None
    assert request.entrypoint is None
    assert request.env == ()
    assert dict(request.labels) == {}
    assert request.runtime == ""
    assert request.privileged is False
    assert request.stop_timeout is None


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [(None, None), ([""], ()), ([], ()), (["/init", "-v"], ("/init", "-v"))],
)
def test_create_entrypoint_forms(entrypoint: Any, expected: Any) -> None:
    body = {"Image": "busybox", "Entrypoint": entrypoint}
    assert api.decode_create_container(body).entrypoint == expected


def test_create_empty_cmd_means_image_command() -> None:
    assert api.decode_create_container({"Image": "b", "Cmd": []}).cmd is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Image": 5}, "Image"),
        ({"Image": "b", "Cmd": "echo hi"}, "Cmd"),
        ({"Image": "b", "Cmd": ["echo", 1]}, "Cmd"),
        ({"Image": "b", "Env": {"A": "1"}}, "Env"),
        ({"Image": "b", "Labels": {"a": 1}}, "Labels"),
        ({"Image": "b", "Labels": ["a"]}, "Labels"),
        ({"Image": "b", "StopTimeout": "5"}, "StopTimeout"),
        ({"Image": "b", "StopTimeout": True}, "StopTimeout"),
        ({"Image": "b", "User": None}, "User"),
        ({"Image": "b", "HostConfig": {"Privileged": "yes"}}, "HostConfig.Privileged"),
        ({"Image": "b", "HostConfig": {"Runtime": 1}}, "HostConfig.Runtime"),
        ({"Image": "b", "HostConfig": {"SecurityOpt": "x"}}, "HostConfig.SecurityOpt"),
        ({"Image": "b", "HostConfig": []}, "HostConfig"),
        ({"Image": "b", "Tty": "no"}, "Tty"),
    ],
)
def test_create_wrong_type_names_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_create_container(body)
    assert f"{field}:" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ([], "must be a JSON object"),
        ("busybox", "must be a JSON object"),
        ({}, "Image is missing"),
        ({"Image": ""}, "Image is missing"),
        ({"Image": "b", "Tty": True}, "TTY is not supported"),
        ({"Image": "b", "OpenStdin": True}, "stdin is not supported"),
    ],
)
def test_create_rejects_unusable_body(body: Any, phrase: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_create_container(body)
    assert phrase in str(caught.value)


@pytest.mark.parametrize(
    "seconds", [api.WAIT_FOREVER, 0, 10, api.MAX_STOP_TIMEOUT, None]
)
def test_create_stop_timeout_accepted(seconds: int | None) -> None:
    body = {"Image": "b", "StopTimeout": seconds}
    assert api.decode_create_container(body).stop_timeout == seconds


@pytest.mark.parametrize("seconds", [-2, -5, api.MAX_STOP_TIMEOUT + 1, 2**63 - 1])
def test_create_stop_timeout_out_of_range(seconds: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_create_container({"Image": "b", "StopTimeout": seconds})
    assert f"StopTimeout {seconds} is out of range" in str(caught.value)
    assert str(api.MAX_STOP_TIMEOUT) in str(caught.value)


@pytest.mark.parametrize(
    ("given", "stored"),
    [("", ""), ("int", "SIGINT"), ("SIGUSR1", "SIGUSR1"), ("9", "9")],
)
def test_create_stop_signal_normalized(given: str, stored: str) -> None:
    body = {"Image": "b", "StopSignal": given}
    assert api.decode_create_container(body).stop_signal == stored


@pytest.mark.parametrize("given", ["SIGRTMIN", "NOPE", "0", "65"])
def test_create_stop_signal_rejected(given: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_create_container({"Image": "b", "StopSignal": given})
    assert "StopSignal: invalid signal" in str(caught.value)
    assert repr(given) in str(caught.value)


def test_wrong_type_message_cuts_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_create_container({"Image": "b", "Cmd": "x" * 100_000})
    message = str(caught.value)
    assert "Cmd:" in message
    assert "(100000 characters)" in message
    assert len(message) < 400


# --- Client JSON ----------------------------------------------------------------------


def test_load_json_accepts_docker_bodies() -> None:
    text = '{"Image": "b", "StopTimeout": -1, "Labels": {"a": "b"}, "X": [1.5, null]}'
    assert api.load_json(text) == json.loads(text)
    assert api.load_json(b'{"n": 9223372036854775807}') == {"n": 2**63 - 1}
    assert api.load_json(b'{"n": -9223372036854775808}') == {"n": -(2**63)}
    nested = "[" * api.MAX_JSON_DEPTH + "]" * api.MAX_JSON_DEPTH
    assert api.load_json(nested) == json.loads(nested)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
        ("[" * 33 + "]" * 33, "nested deeper than 32 levels"),
        ('{"a": ' * 33 + "1" + "}" * 33, "nested deeper than 32 levels"),
        ("1" * 5000, "'1111111111"),
        ("1" * 5000, "(5000 characters) does not fit in 64 bits"),
        ("9223372036854775808", "does not fit in 64 bits"),
        ("-9223372036854775809", "does not fit in 64 bits"),
        ("1e400", "the number '1e400' is too large"),
        ("-1e400", "the number '-1e400' is too large"),
        ("NaN", "NaN is not a JSON value"),
        ("[Infinity]", "Infinity is not a JSON value"),
        ("{nope", "Expecting property name"),
        (b"\xff\xfe\xfd", "can't decode"),
    ],
)
def test_load_json_rejects(text: str | bytes, phrase: str) -> None:
    with pytest.raises(ValueError) as caught:
        api.load_json(text)
    assert phrase in str(caught.value)


def test_quote_value_cuts_long_text() -> None:
    assert api.quote_value("short") == "'short'"
    long = "a" * 1000
    quoted = api.quote_value(long)
    assert quoted == repr("a" * api.MAX_QUOTED_CHARS) + "... (1000 characters)"


# --- Exec bodies ----------------------------------------------------------------------


def test_exec_body_decodes_to_options() -> None:
    body = {
        "Cmd": ["id", "-u"],
        "Env": ["X=1"],
        "WorkingDir": "/tmp",
        "User": "app",
        "Privileged": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "ConsoleSize": None,
    }
    assert api.decode_exec_options(body) == ExecOptions(
        cmd=("id", "-u"), env=("X=1",), working_dir="/tmp", user="app", privileged=True
    )


def test_exec_empty_working_dir_is_container_default() -> None:
    options = api.decode_exec_options({"Cmd": ["true"], "WorkingDir": ""})
    assert options.working_dir is None


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"Cmd": ["sh"], "Tty": True}, "TTY is not supported"),
        ({"Cmd": ["sh"], "AttachStdin": True}, "stdin is not supported"),
        ({}, "Cmd is missing"),
        ({"Cmd": []}, "Cmd is missing"),
        ({"Cmd": "sh"}, "Cmd:"),
        ({"Cmd": ["sh"], "Privileged": 1}, "Privileged:"),
        ({"Cmd": ["sh"], "Env": [None]}, "Env:"),
    ],
)
def test_exec_rejects_bad_body(body: Any, phrase: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.decode_exec_options(body)
    assert phrase in str(caught.value)


def test_exec_start_defaults_and_detach() -> None:
    assert api.decode_exec_start(None) == api.ExecStart()
    assert api.decode_exec_start({"Detach": True, "Tty": False}).detach is True


def test_exec_start_rejects_tty() -> None:
    with pytest.raises(InvalidRequest, match="TTY is not supported"):
        api.decode_exec_start({"Detach": False, "Tty": True})


# --- Queries, versions and signals ----------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, False),
        ([""], False),
        (["0"], False),
        (["false"], False),
        (["no"], False),
        (["none"], False),
        (["1"], True),
        (["true"], True),
        (["True"], True),
        (["0", "1"], True),
    ],
)
def test_query_bool_follows_dockerd(values: list[str] | None, expected: bool) -> None:
    query = {} if values is None else {"all": values}
    assert api.query_bool(query, "all") is expected


def test_query_int_names_parameter() -> None:
    assert api.query_int({"t": ["2"]}, "t") == 2
    assert api.query_int({"t": ["-1"]}, "t") == -1
    assert api.query_int({}, "t") is None
    with pytest.raises(InvalidRequest, match="t='soon'"):
        api.query_int({"t": ["soon"]}, "t")


@pytest.mark.parametrize("value", ["9" * 5000, "1e3", "inf", "1.5", "\u0669", "+-1"])
def test_query_int_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.query_int({"limit": [value]}, "limit")
    message = str(caught.value)
    assert "invalid query parameter limit=" in message
    assert len(message) < 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("-1", -1), ("0", 0), ("10", 10)],
)
def test_query_stop_timeout_accepts(value: str | None, expected: int | None) -> None:
    query = {} if value is None else {"t": [value]}
    assert api.query_stop_timeout(query, "t") == expected


@pytest.mark.parametrize(
    "value", ["-2", "-100", str(api.MAX_STOP_TIMEOUT + 1), "9" * 5000, "nan"]
)
def test_query_stop_timeout_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid query parameter t="):
        api.query_stop_timeout({"t": [value]}, "t")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1.43/containers/json", ("1.43", "/containers/json")),
        ("/v1.24/_ping", ("1.24", "/_ping")),
        ("/containers/json", (None, "/containers/json")),
        ("/v1.43", (None, "/v1.43")),
        ("/v2/info", (None, "/v2/info")),
    ],
)
def test_split_api_version(path: str, expected: tuple[str | None, str]) -> None:
    assert api.split_api_version(path) == expected


def test_check_api_version_bounds() -> None:
    api.check_api_version("1.43")
    api.check_api_version("1.24")
    with pytest.raises(InvalidRequest, match="too new"):
        api.check_api_version("1.50")
    with pytest.raises(InvalidRequest, match="too old"):
        api.check_api_version("1.12")


@pytest.mark.parametrize("version", ["1" * 5000 + ".1", "1." + "4" * 5000, "12345.1"])
def test_check_api_version_rejects_long_parts(version: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.check_api_version(version)
    assert "invalid API version" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_multiplexed_media_type_version() -> None:
    assert api.version_at_least("1.43", "1.42")
    assert not api.version_at_least("1.41", "1.42")
    assert api.version_at_least(None, "1.42")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("KILL", "SIGKILL"),
        ("SIGTERM", "SIGTERM"),
        ("hup", "SIGHUP"),
        ("sigpwr", "SIGPWR"),
        ("STKFLT", "SIGSTKFLT"),
        ("9", "9"),
        ("09", "9"),
        ("1", "1"),
        ("34", "34"),
        ("64", "64"),
    ],
)
def test_parse_signal_accepts(given: str, expected: str) -> None:
    assert api.parse_signal(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "SIGNOPE",
        "",
        "999",
        "-1",
        "0",
        "65",
        "SIGRTMIN",
        "RTMIN",
        "SIGRTMAX",
        "SIGRTMIN+3",
        "SIGIOT",
        "SIGCLD",
        "SIGPOLL",
        "\u0669",
        "1" * 5000,
    ],
)
def test_parse_signal_rejects(given: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid signal") as caught:
        api.parse_signal(given)
    assert len(str(caught.value)) < 200


def test_signal_names_match_runc() -> None:
    # The Linux signalList of golang.org/x/sys/unix, which runc 1.1 looks
    # names up in.
    runc_names = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ]
    assert frozenset(runc_names) == api.SIGNAL_NAMES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        ("1700000000.000000001", 1_700_000_000.000000001),
        (str(api.MAX_TIMESTAMP), float(api.MAX_TIMESTAMP)),
    ],
)
def test_parse_timestamp_accepts(value: str, expected: float) -> None:
    assert api.parse_timestamp(value, "since") == expected


@pytest.mark.parametrize(
    "value",
    [
        "inf",
        "-inf",
        "nan",
        "1e400",
        "1e9",
        "9" * 400,
        str(api.MAX_TIMESTAMP + 1),
        "-5",
        "0x10",
        "1_000",
        " 5",
        "5.",
        "\u0669",
        "soon",
    ],
)
def test_parse_timestamp_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api.parse_timestamp(value, "since")
    assert "invalid query parameter since=" in str(caught.value)
    assert len(str(caught.value)) < 300


# --- Times and status strings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0001-01-01T00:00:00Z"),
        (1.0, "1970-01-01T00:00:01Z"),
        (1.5, "1970-01-01T00:00:01.5Z"),
        (1_700_000_000.25, "2023-11-14T22:13:20.25Z"),
        (1_700_000_000.123456, "2023-11-14T22:13:20.123456Z"),
        (1.9999999, "1970-01-01T00:00:02Z"),
    ],
)
def test_rfc3339_nano(seconds: float, expected: str) -> None:
    assert api.rfc3339_nano(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.2, "Less than a second"),
        (1.0, "1 second"),
        (3.9, "3 seconds"),
        (59.0, "59 seconds"),
        (60.0, "About a minute"),
        (150.0, "2 minutes"),
        (3600.0, "About an hour"),
        (3 * 3600.0, "3 hours"),
        (3 * 86400.0, "3 days"),
        (20 * 86400.0, "2 weeks"),
        (90 * 86400.0, "3 months"),
        (800 * 86400.0, "2 years"),
    ],
)
def test_human_duration(seconds: float, expected: str) -> None:
    assert api.human_duration(seconds) == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (ContainerState(), "Created"),
        (ContainerState(status=records.RUNNING, started_at=97.0), "Up 3 seconds"),
        (
            ContainerState(status=records.EXITED, exit_code=0, finished_at=95.0),
            "Exited (0) 5 seconds ago",
        ),
        (ContainerState(status=records.EXITED, exit_code=137), "Exited (137)"),
        (ContainerState(status=records.REMOVING), "Removal In Progress"),
    ],
)
def test_container_status(state: ContainerState, expected: str) -> None:
    assert api.container_status(state, now=100.0) == expected


# --- Response shapes ------------------------------------------------------------------


def make_record(*, lockin: RuntimeLockIn | None = None) -> ContainerRecord:
    config = ContainerConfig(
        image="busybox",
        image_id=IMAGE_ID,
        cmd=("-c", "sleep 5"),
        entrypoint=("sh",),
        env=("PATH=/bin",),
        working_dir="/srv",
        user="app",
        labels={"tier": "front"},
        apparmor_profile="custom",
    )
    state = ContainerState(status=records.RUNNING, pid=42, started_at=1_700_000_001.5)
    return ContainerRecord(
        id=CONTAINER_ID,
        name="web",
        created=1_700_000_000.0,
        config=config,
        state=state,
        lockin=lockin,
    )


LOCKIN = RuntimeLockIn(
    name="fast",
    binary="/data/runtimes/fast.0123",
    path="/usr/sbin/runc",
    generation=3,
    apparmor_profile="custom",
)


def test_inspect_shape_with_lockin() -> None:
    document = api.container_inspect(make_record(lockin=LOCKIN))
    assert document["Id"] == CONTAINER_ID
    assert document["Name"] == "/web"
    assert document["Created"] == "2023-11-14T22:13:20Z"
    assert document["Path"] == "sh"
    assert document["Args"] == ["-c", "sleep 5"]
    assert document["Image"] == IMAGE_ID
    assert document["AppArmorProfile"] == "custom"
    assert document["State"]["Status"] == "running"
    assert document["State"]["Running"] is True
    assert document["State"]["Pid"] == 42
    assert document["State"]["StartedAt"] == "2023-11-14T22:13:21.5Z"
    assert document["State"]["FinishedAt"] == api.ZERO_TIME
    assert document["Config"]["Image"] == "busybox"
    assert document["Config"]["Cmd"] == ["-c", "sleep 5"]
    assert document["Config"]["Entrypoint"] == ["sh"]
    assert document["Config"]["Labels"] == {"tier": "front"}
    assert document["HostConfig"]["Runtime"] == "fast"
    assert document["HostConfig"]["SecurityOpt"] == ["apparmor=custom"]
    assert document["Dockyard"] == {
        "Runtime": "fast",
        "RuntimeBinary": "/data/runtimes/fast.0123",
        "RuntimePath": "/usr/sbin/runc",
        "Generation": 3,
    }


def test_inspect_before_first_start() -> None:
    document = api.container_inspect(make_record())
    assert document["Dockyard"] is None
    assert document["AppArmorProfile"] == ""
    json.dumps(document)


def test_summary_shape() -> None:
    summary = api.container_summary(make_record(), now=1_700_000_004.5)
    assert summary["Id"] == CONTAINER_ID
    assert summary["Names"] == ["/web"]
    assert summary["Image"] == "busybox"
    assert summary["ImageID"] == IMAGE_ID
    assert summary["Command"] == "sh -c sleep 5"
    assert summary["Created"] == 1_700_000_000
    assert summary["State"] == "running"
    assert summary["Status"] == "Up 3 seconds"
    assert summary["Labels"] == {"tier": "front"}


def test_image_shapes() -> None:
    image = ImageRecord(
        id=IMAGE_ID,
        repo_tags=("busybox:latest",),
        created=1_700_000_000.0,
        size=1234,
        cmd=("sh",),
    )
    summary = api.image_summary(image)
    assert summary["Id"] == IMAGE_ID
    assert summary["RepoTags"] == ["busybox:latest"]
    assert summary["Created"] == 1_700_000_000
    assert summary["Size"] == 1234
    assert summary["Containers"] == -1
    inspected = api.image_inspect(image)
    assert inspected["Created"] == "2023-11-14T22:13:20Z"
    assert inspected["Config"]["Cmd"] == ["sh"]
    assert inspected["Os"] == "linux"


def test_exec_inspect_shape() -> None:
    document = api.exec_inspect(
        exec_id="e1",
        container_id=CONTAINER_ID,
        options=ExecOptions(cmd=("id", "-u"), user="app"),
        running=False,
        exit_code=3,
        pid=0,
    )
    assert document["ID"] == "e1"
    assert document["ContainerID"] == CONTAINER_ID
    assert document["ExitCode"] == 3
    assert document["Running"] is False
    assert document["ProcessConfig"]["entrypoint"] == "id"
    assert document["ProcessConfig"]["arguments"] == ["-u"]
    assert document["ProcessConfig"]["user"] == "app"


# --- Filters --------------------------------------------------------------------------


def test_parse_filters_both_forms() -> None:
    allowed = api.EVENT_FILTERS
    assert api.parse_filters('{"type":{"image":true}}', allowed) == {"type": ("image",)}
    assert api.parse_filters('{"type":["image"]}', allowed) == {"type": ("image",)}
    assert api.parse_filters('{"type":{"image":false}}', allowed) == {"type": ()}
    assert api.parse_filters(None, allowed) == {}


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("{nope", "invalid filters"),
        ("[]", "expected a JSON object"),
        ('{"colour":["red"]}', "invalid filter 'colour'"),
        ('{"type":"image"}', "expected a list of strings"),
        ("[" * 5000 + "]" * 5000, "nested deeper than"),
        ('{"type": ' + "1" * 5000 + "}", "does not fit in 64 bits"),
        ('{"type": NaN}', "NaN is not a JSON value"),
    ],
)
def test_parse_filters_rejects(text: str, phrase: str) -> None:
    with pytest.raises(InvalidRequest, match=phrase):
        api.parse_filters(text, api.EVENT_FILTERS)


START = Event("container", "start", CONTAINER_ID, {"name": "web", "image": "busybox"})


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, True),
        ({"type": ("container",)}, True),
        ({"type": ("image",)}, False),
        ({"type": ("image", "container")}, True),
        ({"event": ("start",)}, True),
        ({"event": ("die",)}, False),
        ({"container": ("web",)}, True),
        ({"container": ("c0ffee",)}, True),
        ({"container": ("db",)}, False),
        ({"image": ("busybox",)}, True),
        ({"type": ("container",), "event": ("die",)}, False),
        ({"label": ("name=web",)}, True),
    ],
)
def test_event_matches(filters: api.Filters, expected: bool) -> None:
    assert api.event_matches(START, filters) is expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"id": ("c0ffee",)}, True),
        ({"id": ("beef",)}, False),
        ({"name": ("we",)}, True),
        ({"name": ("/web",)}, True),
        ({"status": ("running",)}, True),
        ({"status": ("exited",)}, False),
        ({"label": ("tier",)}, True),
        ({"label": ("tier=front",)}, True),
        ({"label": ("tier=back",)}, False),
    ],
)
def test_container_matches(filters: api.Filters, expected: bool) -> None:
    assert api.container_matches(make_record(), filters) is expected


# --- Log frames -----------------------------------------------------------------------

LOG = (
    encode_frame(STDOUT, b"one\ntwo\n")
    + encode_frame(STDERR, b"oops\n")
    + encode_frame(STDOUT, b"three\n")
)


def test_log_frames_by_stream() -> None:
    only_out = list(
        decode_frames(api.select_log_frames(LOG, stdout=True, stderr=False))
    )
    assert only_out == [(STDOUT, b"one\ntwo\n"), (STDOUT, b"three\n")]
    only_err = list(
        decode_frames(api.select_log_frames(LOG, stdout=False, stderr=True))
    )
    assert only_err == [(STDERR, b"oops\n")]


def test_log_frames_tail_counts_lines() -> None:
    tailed = api.select_log_frames(LOG, stdout=True, stderr=True, tail=2)
    assert list(decode_frames(tailed)) == [(STDERR, b"oops\n"), (STDOUT, b"three\n")]
    assert api.select_log_frames(LOG, stdout=True, stderr=True, tail=0) == b""


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("all", None), ("3", 3)])
def test_parse_tail(value: str | None, expected: int | None) -> None:
    assert api.parse_tail(value) == expected


def test_parse_tail_rejects_words() -> None:
    with pytest.raises(InvalidRequest, match="tail='some'"):
        api.parse_tail("some")


@pytest.mark.parametrize("value", ["9" * 5000, "\u0669", "-1", "1.5"])
def test_parse_tail_rejects_numbers(value: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid query parameter tail="):
        api.parse_tail(value)


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("Binds", ["/etc:/hostetc"], "-v/--volume"),
        ("CapDrop", ["ALL"], "--cap-drop"),
        ("CapAdd", ["NET_ADMIN"], "--cap-add"),
        ("ReadonlyRootfs", True, "--read-only"),
        ("Memory", 10485760, "-m/--memory"),
        ("PortBindings", {"80/tcp": [{"HostPort": "8080"}]}, "-p/--publish"),
        ("PidsLimit", 10, "--pids-limit"),
        ("RestartPolicy", {"Name": "always"}, "--restart"),
        ("IpcMode", "host", "--ipc"),
        ("NetworkMode", "host", "--network"),
        ("CgroupnsMode", "host", "--cgroupns"),
        ("LogConfig", {"Type": "none", "Config": {}}, "--log-driver/--log-opt"),
        ("MemorySwappiness", 0, "--memory-swappiness"),
        ("RestartPolicy", "always", "--restart"),
    ],
)
def test_create_rejects_ignored_host_option(
    field: str, value: object, option: str
) -> None:
    body = {"Image": "busybox", "HostConfig": {field: value}}

    with pytest.raises(InvalidRequest) as raised:
        api.decode_create_container(body)

    assert f"{option} (HostConfig.{field})" in str(raised.value)
    assert "not supported by Dockyard" in str(raised.value)


def test_create_accepts_cli_default_host_config() -> None:
    # Defaults as the docker CLI sends them for a plain `docker run`.
    defaults = {
        "Binds": None,
        "CapAdd": None,
        "CapDrop": None,
        "Memory": 0,
        "MemorySwap": 0,
        "PidsLimit": None,
        "PortBindings": {},
        "ReadonlyRootfs": False,
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "IpcMode": "",
        "NetworkMode": "none",
        "Privileged": True,
        "MemorySwappiness": -1,
        "LogConfig": {"Type": "", "Config": {}},
        "CgroupnsMode": "",
    }
    body = {
        "Image": "busybox",
        "HostConfig": defaults,
        "Healthcheck": {"Test": ["NONE"]},
        "NetworkingConfig": {
            "EndpointsConfig": {"none": {"IPAMConfig": None, "MacAddress": ""}}
        },
    }

    request = api.decode_create_container(body)

    assert request.privileged


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"Volumes": {"/data": {}}}, "-v/--volume (Volumes)"),
        ({"ExposedPorts": {"80/tcp": {}}}, "--expose (ExposedPorts)"),
        ({"Healthcheck": {"Test": ["CMD", "false"]}}, "--health-cmd (Healthcheck)"),
        (
            {"NetworkingConfig": {"EndpointsConfig": {"host": {}}}},
            "NetworkingConfig.EndpointsConfig",
        ),
        (
            {
                "NetworkingConfig": {
                    "EndpointsConfig": {
                        "bridge": {"IPAMConfig": {"IPv4Address": "10.0.0.5"}}
                    }
                }
            },
            "NetworkingConfig.EndpointsConfig",
        ),
        # dockerd reads keys in any letter case, so a check must as well.
        ({"hostconfig": {"capdrop": ["ALL"]}}, "--cap-drop (HostConfig.CapDrop)"),
    ],
)
def test_create_rejects_ignored_config(extra: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        api.decode_create_container({"Image": "busybox", **extra})

    assert named in str(raised.value)
