"""Container records on disk: removal by rename, and what a crash leaves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors.container_store import REMOVING_PREFIX, ContainerStore
from messages.errors import RuntimeFailed
from messages.records import ContainerConfig, ContainerRecord


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
        await store.save(record, durable=False)
    assert not store.directory(record.id).exists()
