"""Tests for resolving docker's `--user` value against /etc/passwd and /etc/group."""

from __future__ import annotations

import pytest

from messages.errors import InvalidRequest
from messages.users import (
    DEFAULT_HOME,
    MAX_ID,
    GroupEntry,
    PasswdEntry,
    ResolvedUser,
    parse_group,
    parse_passwd,
    resolve_user,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment line

alice:x:1000:1000:Alice:/home/alice:/bin/sh
broken
bob:x:not-a-number:1:Bob:/home/bob:/bin/sh
nohome:x:1001:1001::
"""

GROUP = """\
root:x:0:
wheel:x:10:root,alice
staff:x:50:alice
alice:x:1000:
audio:x:29:bob,alice
# a comment line
broken
"""

ROOT_USER = ResolvedUser(uid=0, gid=0, additional_gids=(10,), home="/root")
ALICE = ResolvedUser(
    uid=1000, gid=1000, additional_gids=(10, 50, 29), home="/home/alice"
)

# (user value, passwd, group, expected)
RESOLVE_CASES = [
    ("", PASSWD, GROUP, ROOT_USER),
    ("root", PASSWD, GROUP, ROOT_USER),
    ("0", PASSWD, GROUP, ROOT_USER),
    ("alice", PASSWD, GROUP, ALICE),
    ("1000", PASSWD, GROUP, ALICE),
    ("01000", PASSWD, GROUP, ALICE),
    ("7", "7:x:8:8::/home/seven:/bin/sh\n", None, ResolvedUser(uid=7, gid=0)),
    ("daemon", PASSWD, GROUP, ResolvedUser(uid=1, gid=1, home="/usr/sbin")),
    ("nohome", PASSWD, GROUP, ResolvedUser(uid=1001, gid=1001, home=DEFAULT_HOME)),
    ("4242", PASSWD, GROUP, ResolvedUser(uid=4242, gid=0)),
    ("4242:4343", PASSWD, GROUP, ResolvedUser(uid=4242, gid=4343)),
    ("4242:wheel", PASSWD, GROUP, ResolvedUser(uid=4242, gid=10)),
    ("alice:staff", PASSWD, GROUP, ResolvedUser(uid=1000, gid=50, home="/home/alice")),
    ("alice:50", PASSWD, GROUP, ResolvedUser(uid=1000, gid=50, home="/home/alice")),
    ("alice:777", PASSWD, GROUP, ResolvedUser(uid=1000, gid=777, home="/home/alice")),
    ("1000:staff", PASSWD, GROUP, ResolvedUser(uid=1000, gid=50, home="/home/alice")),
    ("alice", PASSWD, None, ResolvedUser(uid=1000, gid=1000, home="/home/alice")),
    ("", None, None, ResolvedUser(uid=0, gid=0)),
    ("1000", None, None, ResolvedUser(uid=1000, gid=0)),
    ("1000:1000", None, None, ResolvedUser(uid=1000, gid=1000)),
    (str(MAX_ID), None, None, ResolvedUser(uid=MAX_ID, gid=0)),
]


@pytest.mark.parametrize(
    ("spec", "passwd", "group", "expected"),
    RESOLVE_CASES,
    ids=[f"{case[0] or 'empty'}-{i}" for i, case in enumerate(RESOLVE_CASES)],
)
def test_resolve_user(
    spec: str, passwd: str | None, group: str | None, expected: ResolvedUser
) -> None:
    assert resolve_user(spec, passwd, group) == expected


# (user value, passwd, group, words the message must contain)
ERROR_CASES = [
    ("nobody", PASSWD, GROUP, ("'nobody'", "not found", "/etc/passwd")),
    ("bob", PASSWD, GROUP, ("'bob'", "not found", "/etc/passwd")),
    ("nobody", None, GROUP, ("'nobody'", "has no /etc/passwd")),
    ("alice:nogroup", PASSWD, GROUP, ("'nogroup'", "not found", "/etc/group")),
    ("1000:nogroup", None, None, ("'nogroup'", "has no /etc/group")),
    ("alice:", PASSWD, GROUP, ("'alice:'", "user:group")),
    (":staff", PASSWD, GROUP, ("':staff'", "user:group")),
    ("alice:staff:x", PASSWD, GROUP, ("'alice:staff:x'", "user:group")),
    (str(MAX_ID + 1), PASSWD, GROUP, (str(MAX_ID + 1), "out of range")),
    (f"alice:{MAX_ID + 1}", PASSWD, GROUP, (str(MAX_ID + 1), "out of range")),
]


@pytest.mark.parametrize(
    ("spec", "passwd", "group", "words"),
    ERROR_CASES,
    ids=[case[0] for case in ERROR_CASES],
)
def test_resolve_user_error(
    spec: str, passwd: str | None, group: str | None, words: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        resolve_user(spec, passwd, group)

    for word in words:
        assert word in str(raised.value)


def test_parse_passwd_skips_malformed_lines() -> None:
    entries = parse_passwd(PASSWD)

    assert [entry.name for entry in entries] == ["root", "daemon", "alice", "nohome"]
    assert entries[2] == PasswdEntry(
        name="alice", uid=1000, gid=1000, home="/home/alice"
    )
    assert entries[3].home == DEFAULT_HOME


def test_parse_group_members() -> None:
    entries = parse_group(GROUP)

    assert [entry.name for entry in entries] == [
        "root",
        "wheel",
        "staff",
        "alice",
        "audio",
    ]
    assert entries[0] == GroupEntry(name="root", gid=0, members=())
    assert entries[1].members == ("root", "alice")


def test_parse_empty_files() -> None:
    assert parse_passwd("") == ()
    assert parse_group("") == ()
