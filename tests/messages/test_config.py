"""daemon.json decoding: every accepted key, and every kind of bad input."""

from __future__ import annotations

import json
import types

import attrs
import pytest

from messages.config import (
    DEFAULT_HOST,
    DaemonConfig,
    DaemonFlags,
    RuntimeConfig,
    config_to_json,
    parse_daemon_json,
)
from messages.errors import InvalidConfig

FULL = {
    "runtimes": {
        "fast": {"path": "/usr/sbin/runc", "runtimeArgs": ["--debug", "a b"]},
        "plain": {"path": "crun"},
    },
    "default-runtime": "fast",
    "data-root": "/srv/dockyard",
    "exec-root": "/run/dy",
    "hosts": ["unix:///run/dy.sock"],
    "debug": True,
    "labels": ["zone=a", "tier=web"],
    "shutdown-timeout": 30,
}


def test_full_file_decodes() -> None:
    config = parse_daemon_json(json.dumps(FULL), source="daemon.json")
    assert config.runtimes["fast"] == RuntimeConfig(
        path="/usr/sbin/runc", runtime_args=("--debug", "a b")
    )
    assert config.runtimes["plain"] == RuntimeConfig(path="crun")
    assert config.default_runtime == "fast"
    assert config.data_root == "/srv/dockyard"
    assert config.exec_root == "/run/dy"
    assert config.hosts == ("unix:///run/dy.sock",)
    assert config.debug is True
    assert config.labels == ("zone=a", "tier=web")
    assert config.shutdown_timeout == 30


def test_empty_object_gives_defaults() -> None:
    assert parse_daemon_json("{}", source="daemon.json") == DaemonConfig()
    assert DaemonConfig().hosts == (DEFAULT_HOST,)


def test_round_trip_through_json() -> None:
    config = parse_daemon_json(json.dumps(FULL), source="daemon.json")
    again = parse_daemon_json(json.dumps(config_to_json(config)), source="again")
    assert again == config


def test_config_is_deeply_immutable() -> None:
    config = parse_daemon_json(json.dumps(FULL), source="daemon.json")
    assert isinstance(config.runtimes, types.MappingProxyType)
    with pytest.raises(TypeError):
        config.runtimes["new"] = RuntimeConfig(path="/x")  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.debug = False  # type: ignore[misc]
    assert isinstance(config.runtimes["fast"].runtime_args, tuple)
    assert isinstance(config.labels, tuple)


BAD_INPUT = [
    ("", "the file is empty. Write {} for the defaults"),
    ("  \n", "the file is empty"),
    ("[" * 100000, "nested too deeply"),
    ('{"shutdown-timeout": 1' + "0" * 5000 + "}", "invalid JSON"),
    ('{"shutdown-timeout": 86401}', "between 0 and 86400 seconds"),
    ('{"runtimes": {"x\\n": {"path": "/x"}}}', "runtime name 'x\\n' is invalid"),
    ('{"runtimes": {"' + "a" * 129 + '": {"path": "/x"}}}', "the maximum is 128"),
    ('{"runtimes": {"a": {"path": "/x\\u0000"}}}', "without NUL characters"),
    ('{"labels": ["a=b\\n", "c\\n=d"]}', "labels[1]"),
    ('{"debug": tru}', "invalid JSON at line 1 column 11"),
    ('{\n  "debug": true,\n}', "line 3 column 1"),
    ("[]", "must be a JSON object"),
    ('{"bogus": 1}', "unknown key: bogus"),
    (
        '{"runtimes": {"a": {"path": "/x", "extra": 1}}}',
        "unknown key in runtimes.a: extra",
    ),
    (
        '{"runtimes": {"fast": {"path": "/x", "runtimeArgs": ["ok", 1]}}}',
        "runtimes.fast.runtimeArgs[1]: expected a string, got a number",
    ),
    (
        '{"runtimes": {"fast": {"path": "/x", "runtimeArgs": "-v"}}}',
        "runtimes.fast.runtimeArgs: expected an array of strings",
    ),
    ('{"runtimes": {"fast": {"path": 5}}}', "runtimes.fast.path: expected a string"),
    ('{"runtimes": []}', "runtimes: expected an object"),
    ('{"runtimes": {"a": "x"}}', "runtimes.a: expected an object, got a string"),
    ('{"debug": "yes"}', "debug: expected true or false, got a string"),
    (
        '{"shutdown-timeout": true}',
        "shutdown-timeout: expected an integer, got a boolean",
    ),
    ('{"shutdown-timeout": 1.5}', "shutdown-timeout: expected an integer"),
    ('{"shutdown-timeout": -1}', "shutdown-timeout is -1"),
    ('{"labels": ["novalue"]}', "labels[0] 'novalue' is not of the form key=value"),
    ('{"runtimes": {"runc": {"path": "/x"}}}', "reserved for the built-in runtime"),
    ('{"runtimes": {"": {"path": "/x"}}}', "runtime name '' is invalid"),
    ('{"runtimes": {".hidden": {"path": "/x"}}}', "runtime name '.hidden' is invalid"),
    ('{"runtimes": {"a/b": {"path": "/x"}}}', "runtime name 'a/b' is invalid"),
    ('{"runtimes": {"a..b": {"path": "/x"}}}', "runtime name 'a..b' is invalid"),
    ('{"runtimes": {"a": {"runtimeArgs": []}}}', "runtimes.a has no path"),
    ('{"runtimes": {"a": {"path": ""}}}', "runtimes.a.path is empty"),
    ('{"runtimes": {"a": {"path": "bin/runc"}}}', "'bin/runc' is a relative path"),
    (
        '{"runtimes": {"a": {"runtimeType": "io.containerd.runc.v2"}}}',
        "runtimes.a.runtimeType is not supported: Dockyard calls OCI runtimes directly",
    ),
    (
        '{"runtimes": {"a": {"path": "/x", "options": {}}}}',
        "runtimes.a.options is not supported",
    ),
    (
        '{"default-runtime": "nope"}',
        "default-runtime 'nope' names no configured runtime",
    ),
    ('{"hosts": ["tcp://0.0.0.0:2375"]}', "Dockyard listens on Unix sockets only"),
    (
        '{"runtimes": {"a": {"path": "/x", "runtimeArgs": ["\\ud800"]}}}',
        "runtimes.a.runtimeArgs[0]: expected valid Unicode text",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUT)
def test_bad_input_is_rejected(text: str, expected: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_daemon_json(text, source="/etc/dockyard/daemon.json")
    message = str(caught.value)
    assert message.startswith("/etc/dockyard/daemon.json: ")
    assert expected in message


def test_default_runtime_lists_choices() -> None:
    text = '{"runtimes": {"fast": {"path": "/x"}}, "default-runtime": "slow"}'
    with pytest.raises(InvalidConfig, match="Use one of: runc, fast"):
        parse_daemon_json(text, source="daemon.json")


def test_flags_override_file() -> None:
    flags = DaemonFlags(data_root="/flag/data", debug=True)
    config = parse_daemon_json('{"exec-root": "/e"}', source="f", flags=flags)
    assert config.data_root == "/flag/data"
    assert config.debug is True
    assert config.exec_root == "/e"


def test_key_given_both_ways_is_an_error() -> None:
    flags = DaemonFlags(data_root="/flag", hosts=("unix:///a.sock",))
    text = '{"data-root": "/file", "hosts": ["unix:///b.sock"]}'
    with pytest.raises(InvalidConfig) as caught:
        parse_daemon_json(text, source="daemon.json", flags=flags)
    message = str(caught.value)
    assert "data-root (from flag: '/flag', from file: '/file')" in message
    assert "hosts (from flag:" in message


def test_key_given_both_ways_even_with_default_value() -> None:
    flags = DaemonFlags(debug=False)
    with pytest.raises(InvalidConfig, match="debug"):
        parse_daemon_json('{"debug": false}', source="daemon.json", flags=flags)
