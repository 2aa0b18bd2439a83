"""Pure tests for image references, records, --change lines and tar member checks."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages.images
from messages.errors import InvalidRequest, NotFound
from messages.images import (
    MAX_EXTENDED_HEADER_BYTES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_MEMBERS,
    MAX_OWNER_ID,
    ROOT,
    CheckedMember,
    ImageRecord,
    MemberKind,
    apply_changes,
    check_archive_totals,
    check_extended_header,
    check_member,
    check_member_owner,
    check_members,
    decode_image_record,
    encode_image_record,
    find_image,
    member_kind,
    normalize_reference,
    parse_reference,
)

HEX_A = "a" * 64
HEX_B = "ab" + "0" * 62


def make_record(
    hex_digest: str = HEX_A, *tags: str, created: float = 1.0
) -> ImageRecord:
    return ImageRecord(
        id=f"sha256:{hex_digest}", repo_tags=tags, created=created, size=10
    )


# --- References --------------------------------------------------------------------

VALID_REFERENCES = [
    ("busybox", ("busybox", "latest")),
    ("busybox:1.36", ("busybox", "1.36")),
    ("busybox:musl_1.36-uclibc", ("busybox", "musl_1.36-uclibc")),
    ("library/busybox", ("library/busybox", "latest")),
    ("docker.io/library/busybox:1.36", ("busybox", "1.36")),
    ("index.docker.io/library/busybox", ("busybox", "latest")),
    ("docker.io/team/app:v2", ("team/app", "v2")),
    ("localhost/app", ("localhost/app", "latest")),
    ("localhost:5000/app", ("localhost:5000/app", "latest")),
    ("localhost:5000/app:v1", ("localhost:5000/app", "v1")),
    ("registry.example.com/a/b:c", ("registry.example.com/a/b", "c")),
    ("my-app__x.y", ("my-app__x.y", "latest")),
    ("app:" + "t" * 128, ("app", "t" * 128)),
]


@pytest.mark.parametrize(("ref", "expected"), VALID_REFERENCES)
def test_parse_reference_valid(ref: str, expected: tuple[str, str]) -> None:
    assert parse_reference(ref) == expected


INVALID_REFERENCES = [
    "",
    "Busybox",
    "busy box",
    "busybox:",
    ":latest",
    "busybox@sha256:" + HEX_A,
    "a//b",
    "-app",
    "app-",
    "app/",
    "a:b:c",
    "app:.tag",
    "app:" + "t" * 129,
    "bad_host!/app",
    HEX_A,
    "x" * 256,
]


@pytest.mark.parametrize("ref", INVALID_REFERENCES)
def test_parse_reference_invalid(ref: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_reference(ref)
    assert repr(ref) in str(raised.value)


def test_parse_reference_uppercase_message() -> None:
    with pytest.raises(InvalidRequest, match="lowercase"):
        parse_reference("MyApp:1")


def test_parse_reference_digest_message() -> None:
    with pytest.raises(InvalidRequest, match="digest"):
        parse_reference("busybox@sha256:" + HEX_A)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", "busybox:latest"),
        ("docker.io/library/busybox:1", "busybox:1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
    ],
)
def test_normalize_reference(ref: str, expected: str) -> None:
    assert normalize_reference(ref) == expected


# --- Records -----------------------------------------------------------------------


def test_record_round_trip() -> None:
    record = ImageRecord(
        id=f"sha256:{HEX_A}",
        repo_tags=("busybox:latest", "localhost:5000/b:1"),
        created=1700000000.25,
        size=1234,
        env=("PATH=/bin",),
        cmd=("sh",),
        entrypoint=("/bin/env",),
        working_dir="/root",
        user="app",
    )
    assert decode_image_record(encode_image_record(record)) == record


def test_record_properties() -> None:
    record = make_record(HEX_B)
    assert record.hex == HEX_B
    assert record.short_id == HEX_B[:12]


def test_record_rejects_invalid_id() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ImageRecord(id="sha256:xyz", repo_tags=(), created=0.0, size=0)


def valid_record_data() -> dict[str, object]:
    return json.loads(encode_image_record(make_record(HEX_A, "busybox:latest")))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cmd", "sh"),  # a string where a list belongs
        ("cmd", [1]),
        ("size", "10"),
        ("size", True),
        ("created", "yesterday"),
        ("id", "sha256:nothex"),
        ("repo_tags", ["Not A Tag"]),
        ("repo_tags", ["busybox"]),  # valid, but not normalized
    ],
)
def test_record_decode_rejects_bad_field(key: str, value: object) -> None:
    data = valid_record_data()
    data[key] = value
    with pytest.raises(ValueError):
        decode_image_record(json.dumps(data))


def test_record_decode_rejects_missing_field() -> None:
    data = valid_record_data()
    del data["size"]
    with pytest.raises(ValueError, match="size"):
        decode_image_record(json.dumps(data))


@pytest.mark.parametrize("text", ["", "{", "[]", "null"])
def test_record_decode_rejects_bad_json(text: str) -> None:
    with pytest.raises(ValueError):
        decode_image_record(text)


def test_record_decode_ignores_unknown_keys() -> None:
    data = valid_record_data()
    data["future_field"] = 1
    assert decode_image_record(json.dumps(data)) == make_record(HEX_A, "busybox:latest")


# --- Finding images ----------------------------------------------------------------


def test_find_image_table() -> None:
    first = make_record(HEX_A, "busybox:latest")
    second = make_record(HEX_B, "app:1")
    records = (first, second)
    assert find_image(records, f"sha256:{HEX_A}") is first
    assert find_image(records, "busybox") is first
    assert find_image(records, "docker.io/library/busybox:latest") is first
    assert find_image(records, "app:1") is second
    assert find_image(records, "aaaa") is first
    assert find_image(records, "sha256:ab00") is second
    assert find_image(records, HEX_B[:12]) is second


def test_find_image_tag_wins_over_prefix() -> None:
    # "ab" is both an id prefix of the first image and a tag of the second.
    first = make_record(HEX_B)
    second = make_record(HEX_A, "ab:latest")
    assert find_image((first, second), "ab") is second


def test_find_image_ambiguous_prefix() -> None:
    records = (make_record("a" * 64), make_record("a" * 63 + "b"))
    with pytest.raises(InvalidRequest, match="ambiguous"):
        find_image(records, "aaa")


def test_find_image_not_found_message() -> None:
    with pytest.raises(NotFound) as raised:
        find_image((make_record(HEX_A, "busybox:latest"),), "nginx")
    assert "'nginx'" in str(raised.value)
    assert "docker images" in str(raised.value)


def test_find_image_untagged_name_not_found() -> None:
    with pytest.raises(NotFound):
        find_image((make_record(HEX_A, "busybox:latest"),), "busybox:1.36")


def test_find_image_invalid_name() -> None:
    with pytest.raises(InvalidRequest, match="Not-Valid"):
        find_image((), "Not-Valid")


# --- --change lines ----------------------------------------------------------------

CHANGES = [
    ('CMD ["sh", "-c", "date"]', "cmd", ("sh", "-c", "date")),
    ("CMD echo hi", "cmd", ("/bin/sh", "-c", "echo hi")),
    ('ENTRYPOINT ["/bin/env"]', "entrypoint", ("/bin/env",)),
    ("entrypoint top -b", "entrypoint", ("/bin/sh", "-c", "top -b")),
    ("ENV A=1 B='two words'", "env", ("A=1", "B=two words")),
    ("ENV GREETING hello there", "env", ("GREETING=hello there",)),
    ("WORKDIR /srv/app", "working_dir", "/srv/app"),
    ("WORKDIR app", "working_dir", "/app"),
    ("USER app:staff", "user", "app:staff"),
]


@pytest.mark.parametrize(("change", "field", "expected"), CHANGES)
def test_apply_changes_table(change: str, field: str, expected: object) -> None:
    record = apply_changes(make_record(), [change])
    assert getattr(record, field) == expected


def test_apply_changes_env_replaces_key() -> None:
    record = apply_changes(make_record(), ["ENV A=1 B=2", "ENV A=3"])
    assert record.env == ("B=2", "A=3")


def test_apply_changes_relative_workdir() -> None:
    record = apply_changes(make_record(), ["WORKDIR /srv", "WORKDIR app/../data"])
    assert record.working_dir == "/srv/data"


@pytest.mark.parametrize(
    "change",
    [
        "EXPOSE 80",
        "CMD",
        "CMD [1, 2]",
        'CMD ["unterminated',
        "ENV =x",
        "ENV A=1 B",
        "ENV A='unterminated",
        "",
    ],
)
def test_apply_changes_rejects(change: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        apply_changes(make_record(), [change])
    assert repr(change) in str(raised.value)


# --- Single tar members ------------------------------------------------------------

ACCEPTED_MEMBERS = [
    ("bin/sh", MemberKind.SYMLINK, "/bin/busybox", "bin/sh"),
    ("bin/sh", MemberKind.SYMLINK, "busybox", "bin/sh"),
    ("etc/root", MemberKind.SYMLINK, "../../../../..", "etc/root"),
    ("./etc/passwd", MemberKind.FILE, None, "etc/passwd"),
    ("etc//./passwd", MemberKind.FILE, None, "etc/passwd"),
    ("a/../b", MemberKind.FILE, None, "b"),
    (".", MemberKind.DIRECTORY, None, "."),
    ("./", MemberKind.DIRECTORY, None, "."),
    ("usr/bin", MemberKind.DIRECTORY, None, "usr/bin"),
    ("bin/ls", MemberKind.HARDLINK, "./bin/busybox", "bin/ls"),
]


@pytest.mark.parametrize(("name", "kind", "linkname", "expected"), ACCEPTED_MEMBERS)
def test_check_member_accepts(
    name: str, kind: MemberKind, linkname: str | None, expected: str
) -> None:
    assert check_member(name, kind, linkname) == PurePosixPath(expected)


REJECTED_MEMBERS = [
    ("../x", MemberKind.FILE, None, "leaves the image root"),
    ("/etc/passwd", MemberKind.FILE, None, "absolute path"),
    ("a/../../x", MemberKind.FILE, None, "leaves the image root"),
    ("..", MemberKind.DIRECTORY, None, "leaves the image root"),
    ("", MemberKind.FILE, None, "empty"),
    ("a\0b", MemberKind.FILE, None, "NUL"),
    ("etc/x", MemberKind.HARDLINK, "../../etc/shadow", "leaves the image root"),
    ("etc/x", MemberKind.HARDLINK, "/etc/shadow", "absolute path"),
    ("etc/x", MemberKind.HARDLINK, "", "empty"),
    ("etc/x", MemberKind.HARDLINK, ".", "image root"),
    ("dev/null", MemberKind.CHARACTER_DEVICE, None, "regular files, directories"),
    ("dev/sda", MemberKind.BLOCK_DEVICE, None, "regular files, directories"),
    ("run/pipe", MemberKind.FIFO, None, "regular files, directories"),
    ("x", MemberKind.OTHER, None, "regular files, directories"),
    ("bin/sh", MemberKind.SYMLINK, "", "empty target"),
    (".", MemberKind.FILE, None, "image root"),
]


@pytest.mark.parametrize(("name", "kind", "linkname", "reason"), REJECTED_MEMBERS)
def test_check_member_rejects(
    name: str, kind: MemberKind, linkname: str | None, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_member(name, kind, linkname)
    assert repr(name) in str(raised.value)
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    ("tar_type", "expected"),
    [
        (b"0", MemberKind.FILE),
        (b"\0", MemberKind.FILE),
        (b"7", MemberKind.FILE),
        (b"5", MemberKind.DIRECTORY),
        (b"2", MemberKind.SYMLINK),
        (b"1", MemberKind.HARDLINK),
        (b"3", MemberKind.CHARACTER_DEVICE),
        (b"4", MemberKind.BLOCK_DEVICE),
        (b"6", MemberKind.FIFO),
        (b"Z", MemberKind.OTHER),
    ],
)
def test_member_kind(tar_type: bytes, expected: MemberKind) -> None:
    assert member_kind(tar_type) is expected


NAME_PARTS = st.sampled_from(["a", "b", "..", ".", "", "etc", "x y"])


@given(
    st.lists(NAME_PARTS, min_size=1, max_size=6).map("/".join),
    st.booleans(),
)
def test_check_member_never_escapes(name: str, absolute: bool) -> None:
    if absolute:
        name = "/" + name
    try:
        path = check_member(name, MemberKind.FILE, None)
    except InvalidRequest:
        return
    assert not path.is_absolute()
    assert ".." not in path.parts
    assert path != ROOT


# --- Whole archives ----------------------------------------------------------------

F, D, S, H = (
    MemberKind.FILE,
    MemberKind.DIRECTORY,
    MemberKind.SYMLINK,
    MemberKind.HARDLINK,
)


def test_check_members_returns_paths() -> None:
    checked = check_members(
        [
            ("./", D, None),
            ("./bin/busybox", F, None),
            ("./bin/sh", S, "/bin/busybox"),
            ("./bin/ls", H, "bin/busybox"),
        ]
    )
    assert checked == (
        CheckedMember(ROOT, D),
        CheckedMember(PurePosixPath("bin/busybox"), F),
        CheckedMember(PurePosixPath("bin/sh"), S),
        CheckedMember(PurePosixPath("bin/ls"), H, PurePosixPath("bin/busybox")),
    )


ARCHIVES_REJECTED = [
    ("write through symlink", [("evil", S, "/tmp"), ("evil/x", F, None)], "evil/x"),
    (
        "write through nested symlink",
        [("a/evil", S, "../.."), ("a/evil/b/c", D, None)],
        "a/evil/b/c",
    ),
    ("write into file", [("f", F, None), ("f/x", F, None)], "f/x"),
    ("replace directory", [("d/x", F, None), ("d", S, "/etc")], "d"),
    ("hard link to missing", [("h", H, "missing")], "h"),
    ("hard link to directory", [("d", D, None), ("h", H, "d")], "h"),
    ("hard link to symlink", [("s", S, "/etc/shadow"), ("h", H, "s")], "h"),
    ("hard link to itself", [("h", F, None), ("h", H, "h")], "h"),
    ("later bad member", [("ok", F, None), ("../bad", F, None)], "../bad"),
]


@pytest.mark.parametrize(
    ("members", "bad"),
    [pytest.param(members, bad, id=case) for case, members, bad in ARCHIVES_REJECTED],
)
def test_check_members_rejects(
    members: list[tuple[str, MemberKind, str | None]], bad: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_members(members)
    assert f"member {bad!r}" in str(raised.value)


def test_check_members_through_symlink_message() -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_members([("evil", S, "/tmp"), ("evil/x", F, None)])
    assert "never writes through a link" in str(raised.value)


def test_check_members_allows_replacing_files() -> None:
    checked = check_members(
        [
            ("x", F, None),
            ("x", S, "y"),
            ("x", F, None),
            ("x", D, None),
            ("x/y", F, None),
        ]
    )
    assert [member.path for member in checked][-1] == PurePosixPath("x/y")


def test_check_members_allows_repeated_directories() -> None:
    checked = check_members([("d", D, None), ("d/f", F, None), ("d", D, None)])
    assert len(checked) == 3


def test_check_members_dotdot_inside_root() -> None:
    # "evil/.." names the root lexically, so nothing passes through the link.
    checked = check_members([("evil", S, "/etc"), ("evil/../x", F, None)])
    assert checked[1].path == PurePosixPath("x")


# --- Owners and archive limits -----------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "gid"), [(0, 0), (1000, 50), (65534, 65534), (MAX_OWNER_ID, MAX_OWNER_ID)]
)
def test_check_member_owner_accepts(uid: int, gid: int) -> None:
    check_member_owner("etc/passwd", uid, gid)


OWNERS_REJECTED = [
    (2**40, 0, "uid 1099511627776"),
    (0, 2**40, "gid 1099511627776"),
    (2**32 - 1, 0, "uid 4294967295"),
    (0, 2**32 - 1, "gid 4294967295"),
    (-1, 0, "uid -1"),
    (0, -5, "gid -5"),
]


@pytest.mark.parametrize(("uid", "gid", "bad"), OWNERS_REJECTED)
def test_check_member_owner_rejects(uid: int, gid: int, bad: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_member_owner("etc/passwd", uid, gid)
    message = str(raised.value)
    assert "member 'etc/passwd'" in message
    assert f"its {bad} is outside the valid range 0 to 4294967294" in message
    assert "--owner=0" in message


def test_max_owner_id_is_linux_range() -> None:
    # 2**32 - 1 is (uid_t) -1, which chown(2) reads as "unchanged".
    assert MAX_OWNER_ID == 2**32 - 2


def test_archive_limit_values() -> None:
    assert MAX_IMAGE_BYTES == 16 * 2**30
    assert MAX_IMAGE_MEMBERS == 1_000_000


def test_check_archive_totals_at_limits() -> None:
    check_archive_totals(0, 0)
    check_archive_totals(MAX_IMAGE_MEMBERS, MAX_IMAGE_BYTES)


def test_check_archive_totals_too_many_members() -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_archive_totals(MAX_IMAGE_MEMBERS + 1, 0)
    message = str(raised.value)
    assert "more than 1,000,000 members" in message
    assert "decompression bombs" in message


def test_check_archive_totals_too_large() -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_archive_totals(1, MAX_IMAGE_BYTES + 1)
    message = str(raised.value)
    assert "at least 17,179,869,185 bytes" in message
    assert "more than 17,179,869,184 bytes" in message
    assert "maximum unpacked size" in message
    assert "decompression bombs" in message


def test_check_archive_totals_reads_current_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The store tests lower the limits this way.
    monkeypatch.setattr(messages.images, "MAX_IMAGE_BYTES", 100)
    check_archive_totals(1, 100)
    with pytest.raises(InvalidRequest, match="more than 100 bytes"):
        check_archive_totals(1, 101)


def test_check_extended_header_at_limit() -> None:
    check_extended_header(0, MAX_EXTENDED_HEADER_BYTES)


def test_check_extended_header_too_large() -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_extended_header(1536, MAX_EXTENDED_HEADER_BYTES + 1)
    message = str(raised.value)
    assert "extended header at byte offset 1536" in message
    assert "1,048,577 bytes, more than the maximum of 1,048,576" in message
