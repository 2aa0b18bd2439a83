"""The pid file watcher against real inotify in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.pidfiles import PidFileWatcher
from messages.errors import RuntimeFailed


@pytest.fixture
async def watcher(tmp_path: Path) -> AsyncIterator[PidFileWatcher]:
    pid_files = PidFileWatcher(tmp_path / "pids")
    async with trio.open_nursery() as nursery:
        await nursery.start(pid_files.run)
        yield pid_files
        nursery.cancel_scope.cancel()


def write_then_rename(directory: Path, name: str, text: str) -> None:
    """Write a pid file as runc does: a hidden file renamed into place."""
    hidden = directory / f".{name}"
    hidden.write_text(text)
    hidden.rename(directory / name)


async def test_rename_into_place_wakes_only_its_start(
    watcher: PidFileWatcher,
) -> None:
    with watcher.expect("a.pid") as a, watcher.expect("b.pid") as b:
        write_then_rename(watcher.directory, "b.pid", "42")
        await b.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not a.is_set()
    assert watcher.path("b.pid").read_text() == "42"


async def test_file_written_in_place_wakes_its_start(watcher: PidFileWatcher) -> None:
    with watcher.expect("c.pid") as written:
        watcher.path("c.pid").write_text("7")
        await written.wait()


async def test_file_written_before_expect_is_not_an_event(
    watcher: PidFileWatcher,
) -> None:
    # A start registers before it spawns the runtime; a file from before
    # that is stale, and the start removes it first.
    write_then_rename(watcher.directory, "d.pid", "1")
    await trio.testing.wait_all_tasks_blocked()
    with watcher.expect("d.pid") as written:
        await trio.testing.wait_all_tasks_blocked()
        assert not written.is_set()


async def test_one_start_per_name(watcher: PidFileWatcher) -> None:
    with (
        watcher.expect("e.pid"),
        pytest.raises(RuntimeError, match=r"e\.pid"),
        watcher.expect("e.pid"),
    ):
        pass
    # Leaving the block frees the name.
    with watcher.expect("e.pid"):
        pass


async def test_expect_before_run_names_the_fix(tmp_path: Path) -> None:
    watcher = PidFileWatcher(tmp_path / "pids")
    with (
        pytest.raises(RuntimeError, match=r"start PidFileWatcher\.run"),
        watcher.expect("f.pid"),
    ):
        pass


async def test_stopping_wakes_every_start(tmp_path: Path) -> None:
    watcher = PidFileWatcher(tmp_path / "pids")
    with contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            assert os.stat(watcher.directory).st_mode & 0o777 == 0o700
            g = stack.enter_context(watcher.expect("g.pid"))
            h = stack.enter_context(watcher.expect("h.pid"))
            nursery.cancel_scope.cancel()
        assert g.is_set()
        assert h.is_set()


async def test_deleted_directory_is_made_and_watched_again(
    watcher: PidFileWatcher,
) -> None:
    with watcher.expect("i.pid") as woken:
        shutil.rmtree(watcher.directory)
        # The lost watch wakes every start, so that each checks its file.
        await woken.wait()
        assert watcher.directory.is_dir()
        written = watcher.renew("i.pid")
        write_then_rename(watcher.directory, "i.pid", "9")
        await written.wait()


async def test_replaced_directory_is_watched_again(watcher: PidFileWatcher) -> None:
    with watcher.expect("j.pid") as woken:
        shutil.rmtree(watcher.directory)
        watcher.directory.mkdir()
        await woken.wait()
        written = watcher.renew("j.pid")
        watcher.path("j.pid").write_text("10")
        await written.wait()


async def test_stale_files_removed_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "pids"
    directory.mkdir()
    (directory / "old.pid").write_text("1")
    (directory / ".old.pid").write_text("2")
    watcher = PidFileWatcher(directory)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        assert list(directory.iterdir()) == []
        nursery.cancel_scope.cancel()


async def test_unusable_directory_names_path_and_fix(tmp_path: Path) -> None:
    directory = tmp_path / "pids"
    directory.write_text("not a directory")
    watcher = PidFileWatcher(directory)
    with pytest.raises(RuntimeFailed) as failure:
        await watcher.run()
    assert str(directory) in str(failure.value)
    assert "another exec-root" in str(failure.value)
