"""Wrapper scripts: quoting, naming, and what a real shell makes of them."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from messages.wrapper import (
    content_digest,
    parse_wrapper_file_name,
    wrapper_file_name,
    wrapper_script,
)

# Prints its arguments as JSON, so the test gets exactly what it received.
ARGV_PRINTER = "#!{python}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def _printer(directory: Path) -> Path:
    path = directory / "print args"
    path.write_text(ARGV_PRINTER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _run_wrapper(directory: Path, content: bytes, *daemon_args: str) -> list[str]:
    wrapper = directory / "wrapper"
    wrapper.write_bytes(content)
    wrapper.chmod(0o700)
    output = subprocess.run(
        [str(wrapper), *daemon_args], capture_output=True, check=True
    ).stdout
    received: list[str] = json.loads(output)
    return received


def test_script_quotes_every_word(tmp_path: Path) -> None:
    printer = _printer(tmp_path)
    hostile = ("a b", "$(touch pwned)", "`id`", "'quote'", '"dq"', ";ls", "*", "")
    content = wrapper_script(str(printer), hostile)
    received = _run_wrapper(tmp_path, content, "--root", "/r", "exec", "x y")
    assert received == [*hostile, "--root", "/r", "exec", "x y"]
    assert not (tmp_path / "pwned").exists()


@given(
    st.lists(
        st.text(
            st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
            max_size=8,
        ),
        max_size=4,
    )
)
def test_any_arguments_survive_the_shell(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        content = wrapper_script(str(_printer(root)), tuple(args))
        assert _run_wrapper(root, content, "state", "c1") == [*args, "state", "c1"]


def test_script_passes_daemon_arguments_as_one_list() -> None:
    content = wrapper_script("/usr/sbin/runc", ("--debug",)).decode()
    assert content == '#!/bin/sh\nexec /usr/sbin/runc --debug "$@"\n'


def test_file_name_carries_content_digest() -> None:
    content = wrapper_script("/usr/sbin/runc", ("--debug",))
    name = wrapper_file_name("fast", content)
    assert name == f"fast.{content_digest(content)}"
    assert parse_wrapper_file_name(name) == ("fast", content_digest(content))


def test_different_content_gets_different_name() -> None:
    first = wrapper_file_name("fast", wrapper_script("/usr/sbin/runc", ("--debug",)))
    second = wrapper_file_name("fast", wrapper_script("/usr/sbin/runc", ("--log=x",)))
    assert first != second


def test_parse_rejects_other_names() -> None:
    assert parse_wrapper_file_name("fast") is None
    assert parse_wrapper_file_name("fast.1234") is None
    assert parse_wrapper_file_name("." + "a" * 64) is None
    assert parse_wrapper_file_name("fast." + "g" * 64) is None
