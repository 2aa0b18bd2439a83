"""The race explorer on a fixed seed: the lock-in holds, and the control breaks.

The same 200 random schedules of starts, execs, stops and reloads run in
virtual time against the real wrapper store and against the dockerd 20.10
store. The first must show no violation; the second must show some, or the
schedules did not exercise the race at all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio.testing

from bench.race_run import (
    default_parent,
    inline_worker_threads,
    run_schedules,
)
from bench.race_schedules import CHANGES, make_schedule

SEED = 20240611
SCHEDULES = 200


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs if there is one: the daemon fsyncs every record."""
    parent = default_parent()
    if parent is None:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="race-explorer-", dir=parent) as root:
        yield Path(root)


async def test_dockyard_store_keeps_lockin(
    workspace: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with inline_worker_threads():
        tally = await run_schedules("dockyard", SEED, range(SCHEDULES), workspace)
    assert tally.schedules == SCHEDULES
    assert tally.failed_reloads == 0
    # The race was exercised: many calls went through a superseded generation.
    assert tally.older_generation_calls > SCHEDULES
    assert tally.violations == 0, tally.examples


async def test_replacing_store_breaks_lockin(
    workspace: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with inline_worker_threads():
        tally = await run_schedules("replacing", SEED, range(SCHEDULES), workspace)
    assert tally.schedules == SCHEDULES
    assert tally.failed_reloads == 0
    assert tally.violations > 0
    assert tally.violating_schedules > 0


def test_schedule_depends_on_seed_and_index_only() -> None:
    assert make_schedule(SEED, 7) == make_schedule(SEED, 7)
    assert make_schedule(SEED, 7) != make_schedule(SEED, 8)
    assert make_schedule(SEED, 7) != make_schedule(SEED + 1, 7)


def test_schedules_cover_every_change() -> None:
    changes = {
        reload.change
        for index in range(50)
        for reload in make_schedule(SEED, index).reloads
    }
    assert changes == set(CHANGES)
