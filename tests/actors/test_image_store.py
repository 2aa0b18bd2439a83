"""The image store against a real filesystem: imports, tags, removal, hostile tars."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import random
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actors.images
import messages.images
from actors.busybox import BUSYBOX_PATH, build_busybox_tar, import_busybox
from actors.images import ImageStore
from messages.errors import Conflict, InvalidRequest, NotFound
from messages.images import (
    CheckedMember,
    MemberKind,
    check_member,
    decode_image_record,
)

# --- Building tarballs -------------------------------------------------------------


def file_member(name: str, data: bytes = b"data", mode: int = 0o644) -> tuple:
    return ("file", name, data, mode)


def dir_member(name: str, mode: int = 0o755) -> tuple:
    return ("dir", name, mode)


def symlink_member(name: str, target: str) -> tuple:
    return ("symlink", name, target)


def hardlink_member(name: str, target: str) -> tuple:
    return ("hardlink", name, target)


def special_member(name: str, tar_type: bytes) -> tuple:
    return ("special", name, tar_type)


def make_tar(members: Iterable[tuple], *, owner: int = 0) -> bytes:
    """Build an uncompressed tarball in memory from member tuples."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            info.uid = info.gid = owner
            content = None
            if kind == "file":
                data, info.mode = rest
                info.size = len(data)
                content = io.BytesIO(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                (info.mode,) = rest
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                (info.linkname,) = rest
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                (info.linkname,) = rest
            else:
                (info.type,) = rest
            tar.addfile(info, content)
    return buffer.getvalue()


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def digest_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Clock:
    """A clock for `ImageStore(now=...)` that advances one second per call."""

    def __init__(self) -> None:
        self.time = 1_700_000_000.0

    def __call__(self) -> float:
        self.time += 1
        return self.time


def new_store(root: Path) -> ImageStore:
    return ImageStore(root, now=Clock())


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("this test needs root to set file owners, and CI runs as root")
    pytest.skip("needs root to set file owners")


def require_busybox() -> None:
    if BUSYBOX_PATH.exists():
        return
    message = f"{BUSYBOX_PATH} is missing: run `apt-get install busybox-static`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


SAMPLE = [
    dir_member("etc"),
    file_member("etc/hello", b"hello\n", 0o640),
    hardlink_member("etc/hello-again", "etc/hello"),
    dir_member("bin"),
    file_member("bin/busybox", b"\x7fELF fake", 0o755),
    symlink_member("bin/sh", "/bin/busybox"),
    symlink_member("bin/ls", "busybox"),
    dir_member("tmp", 0o1777),
]


@pytest.fixture
async def store(tmp_path: Path) -> ImageStore:
    image_store = new_store(tmp_path / "images")
    await image_store.load()
    return image_store


# --- Importing ---------------------------------------------------------------------


async def test_import_unpacks_members(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    record = await store.import_tar(chunks(data), reference="sample")

    assert record.id == digest_id(data)
    assert record.repo_tags == ("sample:latest",)
    assert record.size == len(b"hello\n") + len(b"\x7fELF fake")
    rootfs = store.rootfs(record.id)
    assert rootfs == store.root / record.hex / "rootfs"
    assert (rootfs / "etc/hello").read_bytes() == b"hello\n"
    assert stat.S_IMODE((rootfs / "etc/hello").stat().st_mode) == 0o640
    assert (rootfs / "etc/hello-again").stat().st_ino == (
        rootfs / "etc/hello"
    ).stat().st_ino
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert os.readlink(rootfs / "bin/ls") == "busybox"
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert (rootfs / "etc/hello").stat().st_mtime == 1_600_000_000


async def test_import_writes_record_file(store: ImageStore) -> None:
    record = await store.import_tar(chunks(make_tar(SAMPLE)), reference="sample:1")
    record_file = store.root / record.hex / "image.json"
    assert decode_image_record(record_file.read_text()) == record
    assert sorted(p.name for p in store.root.iterdir()) == [record.hex]
    assert sorted(p.name for p in (store.root / record.hex).iterdir()) == [
        "image.json",
        "rootfs",
    ]
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


async def test_import_from_receive_stream(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(data)
    stream.put_eof()
    record = await store.import_tar(stream)
    assert record.id == digest_id(data)
    assert record.repo_tags == ()


async def test_import_gzip_tar(store: ImageStore) -> None:
    data = gzip.compress(make_tar(SAMPLE), mtime=0)
    record = await store.import_tar(chunks(data))
    assert record.id == digest_id(data)
    assert (store.rootfs(record.id) / "etc/hello").read_bytes() == b"hello\n"


async def test_import_large_file_in_batches(store: ImageStore) -> None:
    content = os.urandom(3 * actors.images.WRITE_BATCH_BYTES + 17)
    data = make_tar([file_member("big", content)])
    record = await store.import_tar(chunks(data, size=64 * 1024))
    assert record.id == digest_id(data)
    assert (store.rootfs(record.id) / "big").read_bytes() == content


async def test_import_applies_changes(store: ImageStore) -> None:
    changes = ["ENV PATH=/bin", 'CMD ["sh"]', "WORKDIR /tmp", "USER app"]
    record = await store.import_tar(chunks(make_tar(SAMPLE)), changes=changes)
    assert record.env == ("PATH=/bin",)
    assert record.cmd == ("sh",)
    assert record.working_dir == "/tmp"
    assert record.user == "app"


async def test_import_rejects_bad_reference_before_reading(store: ImageStore) -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the stream was read")
        yield b""  # pragma: no cover

    with pytest.raises(InvalidRequest, match="Bad:Ref"):
        await store.import_tar(never(), reference="Bad:Ref")
    assert list(store.root.iterdir()) == []


async def test_same_tar_twice_merges_tags(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    first = await store.import_tar(chunks(data), reference="a:1")
    second = await store.import_tar(chunks(data), reference="b:2")
    assert second.id == first.id
    assert second.repo_tags == ("a:1", "b:2")
    assert second.created == first.created
    assert store.list() == (second,)
    assert sorted(p.name for p in store.root.iterdir()) == [first.hex]


async def test_same_tar_concurrently_is_one_image(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: store.import_tar(chunks(data), reference="a"))
        nursery.start_soon(lambda: store.import_tar(chunks(data), reference="b"))
    (record,) = store.list()
    assert sorted(record.repo_tags) == ["a:latest", "b:latest"]
    assert sorted(p.name for p in store.root.iterdir()) == [record.hex]


async def test_reimport_with_other_changes_conflicts(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    await store.import_tar(chunks(data), changes=['CMD ["sh"]'])
    with pytest.raises(Conflict, match="different config"):
        await store.import_tar(chunks(data), changes=['CMD ["ls"]'])
    again = await store.import_tar(chunks(data), reference="plain")
    assert again.cmd == ("sh",)
    assert again.repo_tags == ("plain:latest",)


async def test_import_moves_tag_from_old_image(store: ImageStore) -> None:
    old = await store.import_tar(chunks(make_tar(SAMPLE)), reference="app")
    new = await store.import_tar(chunks(make_tar([file_member("v2")])), reference="app")
    assert store.get(old.id).repo_tags == ()
    assert new.repo_tags == ("app:latest",)
    assert store.get("app").id == new.id
    on_disk = decode_image_record((store.root / old.hex / "image.json").read_text())
    assert on_disk.repo_tags == ()


# --- Looking up and tagging --------------------------------------------------------


async def test_list_get_and_prefix(store: ImageStore) -> None:
    first = await store.import_tar(chunks(make_tar(SAMPLE)), reference="first")
    second = await store.import_tar(
        chunks(make_tar([file_member("x")])), reference="localhost:5000/second:v1"
    )
    assert store.list() == (second, first)
    assert store.get("first") == first
    assert store.get("first:latest") == first
    assert store.get("docker.io/library/first") == first
    assert store.get("localhost:5000/second:v1") == second
    assert store.get(first.id) == first
    assert store.get(first.short_id) == first
    assert store.get("sha256:" + second.hex[:20]) == second


async def test_get_unknown_image(store: ImageStore) -> None:
    await store.import_tar(chunks(make_tar(SAMPLE)), reference="first")
    with pytest.raises(NotFound) as raised:
        store.get("nginx:1.25")
    assert "'nginx:1.25'" in str(raised.value)
    assert "docker images" in str(raised.value)


async def test_rootfs_unknown_id(store: ImageStore) -> None:
    with pytest.raises(NotFound, match="sha256:1234"):
        store.rootfs("sha256:1234")


async def test_tag_adds_and_moves(store: ImageStore) -> None:
    first = await store.import_tar(chunks(make_tar(SAMPLE)), reference="first")
    second = await store.import_tar(chunks(make_tar([file_member("x")])))
    tagged = await store.tag(first.short_id, "shared:1")
    assert tagged.repo_tags == ("first:latest", "shared:1")
    moved = await store.tag(second.id, "shared:1")
    assert moved.repo_tags == ("shared:1",)
    assert store.get("first").repo_tags == ("first:latest",)
    assert store.get("shared:1").id == second.id


async def test_tag_same_image_twice_is_noop(store: ImageStore) -> None:
    record = await store.import_tar(chunks(make_tar(SAMPLE)), reference="first")
    assert await store.tag("first", "first:latest") == record


# --- Removing ----------------------------------------------------------------------


def never_used(_image_id: str) -> bool:
    return False


async def test_remove_tag_keeps_image(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    await store.import_tar(chunks(data), reference="a")
    record = await store.tag("a", "b")
    removal = await store.remove("a", in_use=lambda _: True)
    assert removal.untagged == ("a:latest",)
    assert removal.deleted == ()
    assert store.get(record.id).repo_tags == ("b:latest",)


async def test_remove_last_tag_deletes(store: ImageStore) -> None:
    record = await store.import_tar(chunks(make_tar(SAMPLE)), reference="a")
    removal = await store.remove("a", in_use=never_used)
    assert removal.untagged == ("a:latest",)
    assert removal.deleted == (record.id,)
    assert store.list() == ()
    assert list(store.root.iterdir()) == []
    with pytest.raises(NotFound):
        store.get(record.id)


async def test_remove_in_use_conflicts(store: ImageStore) -> None:
    record = await store.import_tar(chunks(make_tar(SAMPLE)), reference="a")
    queried_ids: list[str] = []

    def in_use(image_id: str) -> bool:
        queried_ids.append(image_id)
        return True

    with pytest.raises(Conflict, match="used by a container"):
        await store.remove("a", in_use=in_use)
    assert queried_ids == [record.id]
    assert store.get("a") == record
    assert (store.rootfs(record.id) / "etc/hello").exists()


async def test_remove_by_id_with_tags_needs_force(store: ImageStore) -> None:
    await store.import_tar(chunks(make_tar(SAMPLE)), reference="a")
    record = await store.tag("a", "b")
    with pytest.raises(Conflict, match="docker rmi -f"):
        await store.remove(record.id, in_use=never_used)
    removal = await store.remove(record.short_id, in_use=never_used, force=True)
    assert removal.untagged == ("a:latest", "b:latest")
    assert removal.deleted == (record.id,)
    assert store.list() == ()


async def test_reimport_after_remove(store: ImageStore) -> None:
    data = make_tar(SAMPLE)
    await store.import_tar(chunks(data), reference="a")
    await store.remove("a", in_use=never_used)
    record = await store.import_tar(chunks(data), reference="a")
    assert (store.rootfs(record.id) / "etc/hello").read_bytes() == b"hello\n"


# --- Hostile tarballs --------------------------------------------------------------


def hostile_tars(outside: Path) -> list[tuple[str, list[tuple], str]]:
    """Return (case, members, rejected member name) for each kind of hostile tar."""
    return [
        ("dotdot", [file_member("../x")], "../x"),
        ("absolute", [file_member(f"{outside}/abs")], f"{outside}/abs"),
        ("nested dotdot", [file_member("a/../../x")], "a/../../x"),
        (
            "hardlink escapes",
            [file_member("etc/ok"), hardlink_member("etc/x", "../../etc/shadow")],
            "etc/x",
        ),
        (
            "hardlink absolute",
            [hardlink_member("etc/x", f"{outside}/target")],
            "etc/x",
        ),
        ("char device", [special_member("dev/null", tarfile.CHRTYPE)], "dev/null"),
        ("block device", [special_member("dev/sda", tarfile.BLKTYPE)], "dev/sda"),
        ("fifo", [special_member("run/pipe", tarfile.FIFOTYPE)], "run/pipe"),
        (
            "symlink then write through it",
            [
                file_member("ok"),
                symlink_member("evil", str(outside)),
                file_member("evil/x", b"pwned"),
            ],
            "evil/x",
        ),
        (
            "relative symlink then directory through it",
            [symlink_member("evil", "../../../.."), dir_member("evil/made")],
            "evil/made",
        ),
    ]


HOSTILE_CASES = [case for case, _, _ in hostile_tars(Path("/outside"))]


@pytest.mark.parametrize("case", HOSTILE_CASES)
async def test_hostile_tar_rejected(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members, bad = next((m, b) for c, m, b in hostile_tars(outside) if c == case)
    store = new_store(tmp_path / "images")
    await store.load()

    def write_members(*_args: object) -> int:
        raise AssertionError("members were written before all of them were checked")

    monkeypatch.setattr(actors.images, "_write_members", write_members)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(make_tar(members)), reference="evil")

    assert f"member {bad!r}" in str(raised.value)
    assert list(store.root.iterdir()) == []
    assert list(outside.iterdir()) == []
    assert not (outside / "x").exists()
    assert store.list() == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "outside"]


def check_each_member_alone(
    members: Iterable[tuple[str, MemberKind, str | None]],
) -> tuple[CheckedMember, ...]:
    """Stand-in for check_members that skips the rules spanning several members."""
    return tuple(
        CheckedMember(check_member(name, kind, linkname), kind)
        for name, kind, linkname in members
    )


@pytest.mark.parametrize(
    "members",
    [
        [symlink_member("evil", "@OUTSIDE@"), file_member("evil/x")],
        [symlink_member("evil", "@OUTSIDE@"), dir_member("evil/x")],
        [symlink_member("evil", "@OUTSIDE@"), symlink_member("evil/x", "/")],
        [symlink_member("evil", "@OUTSIDE@"), file_member("evil/deep/x")],
    ],
)
async def test_unpack_never_follows_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: list[tuple]
) -> None:
    # Even if the checks missed a link, writing through it must fail.
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setattr(actors.images, "check_members", check_each_member_alone)
    store = new_store(tmp_path / "images")
    await store.load()
    data = make_tar(place_outside(member, outside) for member in members)
    with pytest.raises(InvalidRequest, match="never writes through a link"):
        await store.import_tar(chunks(data))
    assert list(outside.iterdir()) == []
    assert list(store.root.iterdir()) == []


async def test_device_rejection_message(store: ImageStore) -> None:
    data = make_tar([special_member("dev/null", tarfile.CHRTYPE)])
    with pytest.raises(InvalidRequest, match="regular files, directories and links"):
        await store.import_tar(chunks(data))


async def test_not_a_tar_rejected(store: ImageStore) -> None:
    with pytest.raises(InvalidRequest, match="not a valid tar archive"):
        await store.import_tar(chunks(b"this is not a tarball" * 100))
    assert list(store.root.iterdir()) == []


async def test_truncated_tar_rejected(store: ImageStore) -> None:
    data = make_tar([file_member("big", os.urandom(20_000))])
    with pytest.raises(InvalidRequest, match="not a valid tar archive"):
        await store.import_tar(chunks(data[:10_000]))
    assert list(store.root.iterdir()) == []


async def test_failing_stream_leaves_nothing(store: ImageStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield make_tar(SAMPLE)[:2000]
        raise trio.BrokenResourceError("client went away")

    with pytest.raises(trio.BrokenResourceError):
        await store.import_tar(broken(), reference="a")
    assert list(store.root.iterdir()) == []
    assert store.list() == ()


# --- Corrupt archives and limits ------------------------------------------------


def forbid_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test fail if the importer starts writing members."""

    def write_members(*_args: object) -> int:
        raise AssertionError("members were written before the archive was checked")

    monkeypatch.setattr(actors.images, "_write_members", write_members)


def ustar_three_members() -> bytearray:
    """Return a USTAR archive of the 5-byte files one, two and three."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("one", "two", "three"):
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"12345"))
    return bytearray(buffer.getvalue())


def broken_second_header() -> bytes:
    data = ustar_three_members()
    # The header of "two" starts at byte 1024 and its checksum field at 148.
    data[1024 + 148 : 1024 + 156] = b"garbage!"
    return bytes(data)


def fifty_files() -> bytes:
    rng = random.Random(50)
    return make_tar(
        [file_member(f"f{index:02}", rng.randbytes(2000)) for index in range(50)]
    )


COMPRESSORS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("compress", [None, "gzip", "bzip2", "xz"])
async def test_broken_middle_header_rejected(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch, compress: str | None
) -> None:
    data = broken_second_header()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        # The stdlib behaviour this check exists for.
        assert tar.getnames() == ["one"]
    if compress is not None:
        data = COMPRESSORS[compress](data)
    forbid_writing(monkeypatch)

    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    message = str(raised.value)
    assert "corrupt at byte offset 1024" in message
    assert "after member 'one'" in message
    assert list(store.root.iterdir()) == []
    assert store.list() == ()


async def test_appended_archive_rejected(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_tar([file_member("a")])
    data = first + make_tar([file_member("b")])
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest, match=f"corrupt at byte offset {len(first)}"):
        await store.import_tar(chunks(data))
    assert list(store.root.iterdir()) == []


async def test_junk_after_padding_rejected(store: ImageStore) -> None:
    data = make_tar(SAMPLE) + b"\0" * 3000 + b"x"
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    assert f"byte offset {len(data) - 1}" in str(raised.value)
    assert "after member 'tmp'" in str(raised.value)
    assert list(store.root.iterdir()) == []


async def test_junk_after_empty_archive_rejected(store: ImageStore) -> None:
    data = b"\0" * 1024 + b"x"
    with pytest.raises(InvalidRequest, match=r"offset 1024 .*, before any member"):
        await store.import_tar(chunks(data))
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\0" * 1024, id="end blocks only"),
        pytest.param(b"\0" * 100, id="partial block"),
        pytest.param(b"", id="no end blocks"),
        pytest.param(b"\0" * 100_000, id="long padding"),
    ],
)
async def test_zero_end_padding_accepted(store: ImageStore, tail: bytes) -> None:
    # Three headers and three data blocks, then the tail.
    data = bytes(ustar_three_members()[: 6 * 512]) + tail
    record = await store.import_tar(chunks(data))
    rootfs = store.rootfs(record.id)
    assert sorted(p.name for p in rootfs.iterdir()) == ["one", "three", "two"]


async def test_end_padding_over_limit_rejected(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actors.images, "MAX_IMAGE_BYTES", 64 * 1024)
    data = gzip.compress(make_tar([file_member("a")]) + b"\0" * (1 << 20))
    with pytest.raises(InvalidRequest, match="more than 65,536 bytes of padding"):
        await store.import_tar(chunks(data))
    assert list(store.root.iterdir()) == []


def flip_crc(data: bytes) -> bytes:
    # A gzip stream ends with the CRC-32 and the length, 4 bytes each.
    broken = bytearray(data)
    broken[-8] ^= 0xFF
    return bytes(broken)


def cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_middle_byte(data: bytes) -> bytes:
    broken = bytearray(data)
    broken[len(broken) // 2] ^= 0xFF
    return bytes(broken)


CORRUPT_STREAMS = [
    ("gzip bad crc", lambda tar: flip_crc(gzip.compress(tar, mtime=0))),
    ("gzip flipped byte", lambda tar: flip_middle_byte(gzip.compress(tar, mtime=0))),
    ("gzip truncated", lambda tar: gzip.compress(tar, mtime=0)[:-4]),
    ("gzip cut in half", lambda tar: cut_in_half(gzip.compress(tar, mtime=0))),
    ("gzip trailing junk", lambda tar: gzip.compress(tar, mtime=0) + b"junk"),
    ("bzip2 flipped byte", lambda tar: flip_middle_byte(bz2.compress(tar))),
    ("bzip2 truncated", lambda tar: bz2.compress(tar)[:-10]),
    ("xz flipped byte", lambda tar: flip_middle_byte(lzma.compress(tar))),
    ("xz truncated", lambda tar: lzma.compress(tar)[:-10]),
]


@pytest.mark.parametrize(
    "damage",
    [pytest.param(damage, id=case) for case, damage in CORRUPT_STREAMS],
)
async def test_corrupt_compressed_stream_rejected(
    store: ImageStore,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[bytes], bytes],
) -> None:
    data = damage(fifty_files())
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    assert str(raised.value).startswith("invalid image archive: ")
    assert list(store.root.iterdir()) == []
    assert store.list() == ()


async def test_bad_crc_reports_decompressor_error(store: ImageStore) -> None:
    data = flip_crc(gzip.compress(fifty_files(), mtime=0))
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    assert "compressed data is corrupt or truncated" in str(raised.value)
    assert "CRC check failed" in str(raised.value)


async def test_truncated_gzip_is_invalid_request(store: ImageStore) -> None:
    data = gzip.compress(fifty_files(), mtime=0)[:-4]
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    assert "EOFError" in str(raised.value)
    assert isinstance(raised.value.__cause__, EOFError)


async def test_gzip_bomb_rejected_before_writing(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages.images, "MAX_IMAGE_BYTES", 1 << 20)
    data = gzip.compress(make_tar([file_member("zeros", bytes(4 << 20))]))
    assert len(data) < 64 * 1024
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    message = str(raised.value)
    assert "at least 4,194,304 bytes" in message
    assert "more than 1,048,576 bytes" in message
    assert "decompression bombs" in message
    assert list(store.root.iterdir()) == []


async def test_member_sizes_summed_against_limit(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages.images, "MAX_IMAGE_BYTES", 1000)
    data = make_tar([file_member(f"f{index}", bytes(300)) for index in range(4)])
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest, match="at least 1,200 bytes"):
        await store.import_tar(chunks(data))
    assert list(store.root.iterdir()) == []


async def test_size_at_limit_accepted(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages.images, "MAX_IMAGE_BYTES", 1200)
    data = make_tar([file_member(f"f{index}", bytes(300)) for index in range(4)])
    record = await store.import_tar(chunks(data))
    assert record.size == 1200


async def test_member_count_limit(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages.images, "MAX_IMAGE_MEMBERS", 3)
    data = make_tar([dir_member(f"d{index}") for index in range(5)])
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest, match="more than 3 members"):
        await store.import_tar(chunks(data))
    assert list(store.root.iterdir()) == []


async def test_write_limit_enforced(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the writer uses the lower limit, as if the headers had understated
    # the content. Two headers and two data blocks, without the end padding,
    # which counts against the same limit.
    monkeypatch.setattr(actors.images, "MAX_IMAGE_BYTES", 10)
    members = [file_member("a", b"12345678"), file_member("b", b"12345678")]
    data = make_tar(members)[: 4 * 512]
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    assert "member 'b'" in str(raised.value)
    assert "past 10 bytes" in str(raised.value)
    assert list(store.root.iterdir()) == []
    assert store.list() == ()


def tar_with_header(name: str, **fields: object) -> bytes:
    """Build a PAX archive of one 4-byte file whose TarInfo has these fields."""
    info = tarfile.TarInfo(name)
    info.size = 4
    info.mtime = 1_600_000_000
    for field, value in fields.items():
        setattr(info, field, value)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"data"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("field", "value"),
    [("uid", 2**40), ("gid", 2**40), ("uid", 2**32 - 1), ("uid", -5), ("gid", -1)],
)
async def test_owner_out_of_range_rejected(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch, field: str, value: int
) -> None:
    data = tar_with_header("etc/owned", **{field: value})
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    message = str(raised.value)
    assert "member 'etc/owned'" in message
    assert f"its {field} {value} is outside" in message
    assert "free space" not in message
    assert list(store.root.iterdir()) == []


async def test_largest_owner_accepted(store: ImageStore) -> None:
    data = tar_with_header("owned", uid=2**32 - 2, gid=2**32 - 2)
    record = await store.import_tar(chunks(data))
    owned = (store.rootfs(record.id) / "owned").stat()
    # Without root the files keep the daemon's own uid and gid.
    if os.geteuid() == 0:
        assert (owned.st_uid, owned.st_gid) == (2**32 - 2, 2**32 - 2)


@pytest.mark.parametrize("mtime", ["1e300", "-1e300", "nan", "inf"])
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(tarfile.REGTYPE, id="file"),
        pytest.param(tarfile.DIRTYPE, id="directory"),
        pytest.param(tarfile.SYMTYPE, id="symlink"),
    ],
)
async def test_mtime_out_of_range_rejected(
    store: ImageStore, mtime: str, kind: bytes
) -> None:
    fields: dict[str, object] = {"type": kind, "pax_headers": {"mtime": mtime}}
    if kind != tarfile.REGTYPE:
        fields["size"] = 0
    if kind == tarfile.SYMTYPE:
        fields["linkname"] = "target"
    data = tar_with_header("stamped", **fields)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    message = str(raised.value)
    assert "member 'stamped'" in message
    assert "modification time" in message
    assert "free space" not in message
    assert list(store.root.iterdir()) == []


def oversized_extended_header(tar_type: bytes, size: int) -> bytes:
    """Return an extended header of this type followed by ``size`` zero bytes."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = tar_type
    info.size = size
    padding = -size % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(size + padding)


@pytest.mark.parametrize(
    "tar_type",
    [
        pytest.param(tarfile.XHDTYPE, id="pax"),
        pytest.param(tarfile.XGLTYPE, id="pax global"),
        pytest.param(tarfile.GNUTYPE_LONGNAME, id="gnu long name"),
        pytest.param(tarfile.GNUTYPE_LONGLINK, id="gnu long link"),
    ],
)
@pytest.mark.parametrize("position", ["first", "second"])
async def test_oversized_extended_header_rejected(
    store: ImageStore,
    monkeypatch: pytest.MonkeyPatch,
    tar_type: bytes,
    position: str,
) -> None:
    # tarfile would read the whole header into memory: 8 MiB from 8 KiB.
    header = oversized_extended_header(tar_type, 8 << 20)
    first = b"" if position == "first" else make_tar([file_member("a")])[:1024]
    data = gzip.compress(first + header + bytes(1024))
    assert len(data) < 16 * 1024
    forbid_writing(monkeypatch)
    with pytest.raises(InvalidRequest) as raised:
        await store.import_tar(chunks(data))
    message = str(raised.value)
    assert f"extended header at byte offset {len(first)}" in message
    assert "8,388,608 bytes, more than the maximum of 1,048,576" in message
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
async def test_long_names_still_import(store: ImageStore, tar_format: int) -> None:
    name = "/".join(["d" * 60] * 5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"data"))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = name
        tar.addfile(link)
    record = await store.import_tar(chunks(buffer.getvalue()))
    rootfs = store.rootfs(record.id)
    assert (rootfs / name).read_bytes() == b"data"
    assert os.readlink(rootfs / "link") == name


# Member names come from small pools of parts, so that later members often pass
# through earlier ones. Safe names are relative and never leave the root, while
# links point out of the store. Hostile names add "..", absolute paths into the
# outside directory and hard links anywhere.
OUTSIDE = "@OUTSIDE@"
SAFE_NAMES = st.lists(st.sampled_from(["a", "evil"]), min_size=1, max_size=3).map(
    "/".join
)
HOSTILE_NAMES = st.one_of(
    st.lists(st.sampled_from(["a", "evil", "..", "."]), min_size=1, max_size=3).map(
        "/".join
    ),
    st.lists(st.sampled_from(["a", ".."]), max_size=2).map(
        lambda parts: "/".join([OUTSIDE, *parts])
    ),
)
LINK_TARGETS = st.sampled_from([OUTSIDE, f"{OUTSIDE}/a", "../../..", "/", "a", "."])


def members_from(names: st.SearchStrategy[str]) -> st.SearchStrategy[tuple]:
    return st.one_of(
        st.builds(file_member, names),
        st.builds(dir_member, names),
        st.builds(symlink_member, names, LINK_TARGETS),
        st.builds(hardlink_member, names, names),
    )


def place_outside(member: tuple, outside: Path) -> tuple:
    return tuple(
        field.replace(OUTSIDE, str(outside)) if isinstance(field, str) else field
        for field in member
    )


async def check_import_stays_inside(tmp_path: Path, members: list[tuple]) -> None:
    """Import the members and assert that nothing exists outside the store."""
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    outside = base / "outside"
    outside.mkdir()
    store = new_store(base / "images")
    await store.load()

    data = make_tar(place_outside(member, outside) for member in members)
    try:
        record = await store.import_tar(chunks(data))
    except InvalidRequest:
        assert list(store.root.iterdir()) == []
    else:
        assert [p.name for p in store.root.iterdir()] == [record.hex]
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in base.iterdir()) == ["images", "outside"]


PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(members=st.lists(members_from(SAFE_NAMES), min_size=1, max_size=5))
async def test_safe_names_stay_inside(tmp_path: Path, members: list[tuple]) -> None:
    await check_import_stays_inside(tmp_path, members)


@PROPERTY_SETTINGS
@given(members=st.lists(members_from(HOSTILE_NAMES), min_size=1, max_size=5))
async def test_hostile_names_stay_inside(tmp_path: Path, members: list[tuple]) -> None:
    await check_import_stays_inside(tmp_path, members)


# --- Loading -----------------------------------------------------------------------


async def test_load_reads_records(tmp_path: Path) -> None:
    store = new_store(tmp_path / "images")
    await store.load()
    first = await store.import_tar(chunks(make_tar(SAMPLE)), reference="a")
    second = await store.import_tar(chunks(make_tar([file_member("x")])))

    reloaded = new_store(tmp_path / "images")
    await reloaded.load()
    assert reloaded.list() == (second, first)
    assert reloaded.get("a") == first


async def test_load_skips_corrupt_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store(tmp_path / "images")
    await store.load()
    good = await store.import_tar(chunks(make_tar(SAMPLE)), reference="good")
    bad = await store.import_tar(chunks(make_tar([file_member("x")])), reference="bad")
    (store.root / bad.hex / "image.json").write_text("{ not json")

    reloaded = new_store(tmp_path / "images")
    with caplog.at_level(logging.WARNING, logger="actors.images"):
        await reloaded.load()
    assert reloaded.list() == (good,)
    assert bad.hex in caplog.text
    assert "invalid JSON" in caplog.text


async def test_load_skips_mismatched_and_incomplete(tmp_path: Path) -> None:
    store = new_store(tmp_path / "images")
    await store.load()
    good = await store.import_tar(chunks(make_tar(SAMPLE)), reference="good")
    other = await store.import_tar(chunks(make_tar([file_member("x")])))
    # A record copied under another directory name, and one without its rootfs.
    wrong = store.root / ("f" * 64)
    wrong.mkdir()
    (wrong / "rootfs").mkdir()
    (wrong / "image.json").write_text(
        (store.root / good.hex / "image.json").read_text()
    )
    (store.root / other.hex / "rootfs").rename(store.root / "moved-away")

    reloaded = new_store(tmp_path / "images")
    await reloaded.load()
    assert reloaded.list() == (good,)
    assert (store.root / "moved-away").exists()


async def test_load_removes_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / ".import-abc/rootfs/bin").mkdir(parents=True)
    (root / ".remove-def/x").mkdir(parents=True)
    store = new_store(root)
    await store.load()
    assert list(root.iterdir()) == []


async def test_load_resolves_duplicate_tags(tmp_path: Path) -> None:
    store = new_store(tmp_path / "images")
    await store.load()
    old = await store.import_tar(chunks(make_tar(SAMPLE)), reference="app")
    new = await store.import_tar(chunks(make_tar([file_member("x")])))
    # Give the newer image the same tag by hand, as a manual edit would.
    record_file = store.root / new.hex / "image.json"
    data = json.loads(record_file.read_text())
    data["repo_tags"] = ["app:latest"]
    record_file.write_text(json.dumps(data))

    reloaded = new_store(tmp_path / "images")
    await reloaded.load()
    assert reloaded.get("app").id == new.id
    assert reloaded.get(old.id).repo_tags == ()


async def test_import_replaces_unreadable_directory(tmp_path: Path) -> None:
    data = make_tar(SAMPLE)
    store = new_store(tmp_path / "images")
    await store.load()
    record = await store.import_tar(chunks(data), reference="a")
    (store.root / record.hex / "image.json").write_text("garbage")

    reloaded = new_store(tmp_path / "images")
    await reloaded.load()
    assert reloaded.list() == ()
    again = await reloaded.import_tar(chunks(data), reference="a")
    assert again.id == record.id
    assert (reloaded.rootfs(again.id) / "etc/hello").read_bytes() == b"hello\n"
    assert [p.name for p in reloaded.root.iterdir()] == [record.hex]


# --- Owners (root only) ------------------------------------------------------------


@pytest.mark.real
async def test_import_sets_owners_and_setuid(store: ImageStore) -> None:
    require_root()
    data = make_tar(
        [
            dir_member("home"),
            file_member("home/tool", b"#!/bin/sh\n", 0o4755),
            symlink_member("home/link", "tool"),
        ],
        owner=1234,
    )
    record = await store.import_tar(chunks(data))
    rootfs = store.rootfs(record.id)
    tool = (rootfs / "home/tool").stat()
    assert tool.st_uid == 1234
    assert tool.st_gid == 1234
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert (rootfs / "home/link").lstat().st_uid == 1234
    assert (rootfs / "home").stat().st_uid == 1234


# --- The busybox image -------------------------------------------------------------


def test_busybox_tar_is_deterministic() -> None:
    require_busybox()
    assert build_busybox_tar() == build_busybox_tar()


async def test_busybox_tar_imports(store: ImageStore) -> None:
    require_busybox()
    data = build_busybox_tar()
    record = await store.import_tar(chunks(data, size=256 * 1024), reference="busybox")
    again = await store.import_tar(chunks(build_busybox_tar()), reference="bb:2")
    assert again.id == record.id == digest_id(data)

    rootfs = store.rootfs(record.id)
    assert (rootfs / "bin/busybox").read_bytes() == BUSYBOX_PATH.read_bytes()
    assert os.access(rootfs / "bin/busybox", os.X_OK)
    assert (rootfs / "bin/sh").is_symlink()
    assert os.readlink(rootfs / "bin/sh") == "busybox"
    assert os.readlink(rootfs / "bin/ls") == "busybox"
    assert not (rootfs / "bin/busybox").is_symlink()
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" in passwd
    assert any(line.startswith("app:x:1000:1000:") for line in passwd)
    group = (rootfs / "etc/group").read_text().splitlines()
    assert "app:x:1000:app" in group
    assert "staff:x:50:app" in group
    assert (rootfs / "etc/hostname").read_bytes() == b""
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    for directory in ("root", "home/app", "proc", "sys", "dev"):
        assert (rootfs / directory).is_dir(), directory
    assert list((rootfs / "tmp").iterdir()) == []


async def test_import_busybox_sets_config(store: ImageStore) -> None:
    require_busybox()
    record = await import_busybox(store)
    assert record.repo_tags == ("busybox:latest",)
    assert record.cmd == ("sh",)
    assert any(entry.startswith("PATH=") for entry in record.env)


@pytest.mark.real
async def test_busybox_home_owned_by_app(store: ImageStore) -> None:
    require_root()
    require_busybox()
    record = await store.import_tar(chunks(build_busybox_tar()))
    home = (store.rootfs(record.id) / "home/app").stat()
    assert (home.st_uid, home.st_gid) == (1000, 1000)


def test_busybox_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as raised:
        build_busybox_tar(tmp_path / "busybox")
    assert "apt-get install busybox-static" in str(raised.value)
    assert str(tmp_path / "busybox") in str(raised.value)


def test_busybox_dynamic_rejected(tmp_path: Path) -> None:
    dynamic = Path("/bin/true").resolve()
    with pytest.raises(InvalidRequest) as raised:
        build_busybox_tar(dynamic)
    assert "dynamically linked" in str(raised.value)
    assert "apt-get install busybox-static" in str(raised.value)


def test_busybox_not_elf(tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho sh\n")
    script.chmod(0o755)
    with pytest.raises(InvalidRequest, match="not an ELF executable"):
        build_busybox_tar(script)
