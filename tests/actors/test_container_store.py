"""Container records on disk: removal by rename, and what a crash leaves."""

from __future__ import annotations

import time
from pathlib import Path

from actors.container_store import REMOVING_PREFIX, ContainerStore
from messages.records import ContainerConfig, ContainerRecord


def _record(container_id: str) -> ContainerRecord:
    config = ContainerConfig(image="tiny", image_id="sha256:" + "0" * 64)
    return ContainerRecord(
        id=container_id, name=container_id[:8], created=time.time(), config=config
    )


async def test_discard_takes_record_away_at_once(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    await store.save(_record("a" * 64), durable=False)
    (store.directory("a" * 64) / "upper").mkdir()

    discarded = store.discard("a" * 64)

    assert discarded == tmp_path / f"{REMOVING_PREFIX}{'a' * 64}"
    assert not store.directory("a" * 64).exists()
    assert store.load_all() == []
    await store.purge(discarded)
    assert not discarded.exists()


async def test_discard_of_missing_directory_returns_none(tmp_path: Path) -> None:
    assert ContainerStore(tmp_path).discard("b" * 64) is None


async def test_interrupted_removal_is_finished_at_load(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    remaining = _record("c" * 64)
    await store.save(remaining, durable=False)
    await store.save(_record("d" * 64), durable=False)
    # A daemon that crashed between the rename and the deletion left this.
    store.discard("d" * 64)

    assert store.load_all() == [remaining]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c" * 64]
