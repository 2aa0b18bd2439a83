"""Container records on disk: the state file, removal by rename, and what a
crash or a power loss leaves."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest

from actors.container_store import (
    RECORD_FILE,
    REMOVING_PREFIX,
    STATE_FILE,
    ContainerStore,
)
from messages.errors import RuntimeFailed
from messages.records import (
    EXITED,
    ContainerConfig,
    ContainerRecord,
    ContainerState,
    RuntimeLockIn,
)


def _record(container_id: str) -> ContainerRecord:
    config = ContainerConfig(image="tiny", image_id="sha256:" + "0" * 64)
    return ContainerRecord(
        id=container_id, name=container_id[:8], created=time.time(), config=config
    )


async def test_discard_takes_record_away_at_once(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    await store.create(_record("a" * 64))
    (store.directory("a" * 64) / "upper").mkdir()

    discarded = store.discard("a" * 64)

    assert discarded == tmp_path / f"{REMOVING_PREFIX}{'a' * 64}"
    assert not store.directory("a" * 64).exists()
    assert store.load_all() == []


async def test_discard_of_missing_directory_returns_none(tmp_path: Path) -> None:
    assert ContainerStore(tmp_path).discard("b" * 64) is None


async def test_interrupted_removal_is_finished_at_load(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    remaining = _record("c" * 64)
    await store.create(remaining)
    await store.create(_record("d" * 64))
    # A daemon that crashed between the rename and the deletion left this.
    store.discard("d" * 64)

    unmounted: list[Path] = []

    assert store.load_all(unmounted.append) == [remaining]
    assert unmounted == [tmp_path / f"{REMOVING_PREFIX}{'d' * 64}"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c" * 64]


async def test_leftover_whose_unmount_fails_is_kept(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    await store.create(_record("e" * 64))
    discarded = store.discard("e" * 64)

    def unmount(directory: Path) -> None:
        raise RuntimeFailed(f"unmounting {directory / 'rootfs'} failed: busy")

    # Deleting it would reach into a root filesystem still mounted there.
    assert store.load_all(unmount) == []
    assert discarded is not None
    assert discarded.exists()


async def test_write_after_discard_does_not_bring_it_back(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    record = _record("f" * 64)
    await store.create(record)
    store.discard(record.id)

    with pytest.raises(FileNotFoundError):
        await store.save(record)
    assert not store.directory(record.id).exists()


async def test_state_file_overrides_create_record(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    record = _record("7" * 64)
    await store.create(record)
    created = (store.directory(record.id) / RECORD_FILE).read_bytes()
    lockin = RuntimeLockIn(
        name="runc",
        binary="/usr/bin/runc",
        path="/usr/bin/runc",
        generation=3,
        apparmor_profile="",
    )
    state = ContainerState(status=EXITED, exit_code=3)
    await store.save(attrs.evolve(record, state=state, lockin=lockin))

    [loaded] = store.load_all()
    assert loaded.state == state
    assert loaded.lockin == lockin
    # The create's record, flushed to the disk, is never written again.
    assert (store.directory(record.id) / RECORD_FILE).read_bytes() == created


@pytest.mark.parametrize("content", [b"", b'{"version": 1, "stor'])
async def test_unreadable_state_file_falls_back_to_create(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    # What a power loss may leave of a state file on a file system that
    # commits a rename before the renamed file's data.
    store = ContainerStore(tmp_path)
    record = _record("8" * 64)
    await store.create(record)
    (store.directory(record.id) / STATE_FILE).write_bytes(content)

    assert store.load_all() == [record]
    assert "8" * 12 in caplog.text
    assert "state.json is unreadable" in caplog.text


async def test_save_to_missing_directory_leaves_no_file(tmp_path: Path) -> None:
    record = _record("9" * 64)
    with pytest.raises(FileNotFoundError):
        await ContainerStore(tmp_path).save(record)
    assert list(tmp_path.iterdir()) == []


async def test_empty_record_of_lost_create_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a power loss between the create's rename and its flush leaves.
    store = ContainerStore(tmp_path)
    record = _record("6" * 64)
    await store.create(record)
    (store.directory(record.id) / RECORD_FILE).write_bytes(b"")

    assert store.load_all() == []
    assert not store.directory(record.id).exists()
    assert "never saved" in caplog.text


async def test_flush_of_removed_container_is_skipped(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    record = _record("5" * 64)
    await store.create(record)
    await store.flush(record.id)
    store.discard(record.id)

    await store.flush(record.id)


async def test_empty_record_of_started_container_is_kept(tmp_path: Path) -> None:
    # An empty record beside the files of a start is not a lost create: the
    # container may still run on its root filesystem, so nothing is deleted.
    store = ContainerStore(tmp_path)
    record = _record("4" * 64)
    await store.create(record)
    await store.save(record)
    (store.directory(record.id) / "rootfs").mkdir()
    (store.directory(record.id) / RECORD_FILE).write_bytes(b"")

    assert store.load_all() == []
    assert (store.directory(record.id) / "rootfs").is_dir()
    assert (store.directory(record.id) / STATE_FILE).exists()
