"""The lock on a daemon's roots, with real processes holding it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.root_lock import LOCK_FILE, RootLock
from messages.errors import Conflict

ROOT = Path(__file__).resolve().parents[2]
# A process that takes the lock on the root in argv[1], prints "locked", and waits.
HOLDER = """
import sys, time
from pathlib import Path
from actors.root_lock import RootLock
RootLock.acquire([Path(sys.argv[1])])
print("locked", flush=True)
time.sleep(600)
"""
# Hang guard for the holder process, not a measurement.
HOLDER_TIMEOUT_SECONDS = 60


def start_holder(root: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_held_root_names_holder_pid(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(Conflict) as raised:
            RootLock.acquire([tmp_path])
    finally:
        holder.kill()
        holder.wait(timeout=HOLDER_TIMEOUT_SECONDS)

    message = str(raised.value)
    assert f"{tmp_path} is in use by another Dockyard daemon" in message
    assert f"(pid {holder.pid})" in message
    assert "data-root and an exec-root of its own" in message


def test_killed_holder_frees_root(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    holder.kill()
    holder.wait(timeout=HOLDER_TIMEOUT_SECONDS)

    lock = RootLock.acquire([tmp_path])
    lock.release()


def test_release_frees_root_despite_child(tmp_path: Path) -> None:
    # A child started while the lock was held, as a runtime process is,
    # must not keep the lock after the daemon releases it.
    lock = RootLock.acquire([tmp_path])
    child = subprocess.Popen(["sleep", "600"])
    try:
        lock.release()
        relocked = RootLock.acquire([tmp_path])
        relocked.release()
        holder = start_holder(tmp_path)
        holder.kill()
        holder.wait(timeout=HOLDER_TIMEOUT_SECONDS)
    finally:
        child.kill()
        child.wait(timeout=HOLDER_TIMEOUT_SECONDS)


def test_same_root_twice_locks_once(tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(tmp_path, alias)

    lock = RootLock.acquire([tmp_path, alias, tmp_path])

    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_failed_lock_releases_earlier_roots(tmp_path: Path) -> None:
    free_root, held_root = tmp_path / "free", tmp_path / "held"
    free_root.mkdir()
    held_root.mkdir()
    holder = start_holder(held_root)
    try:
        with pytest.raises(Conflict):
            RootLock.acquire([free_root, held_root])
        lock = RootLock.acquire([free_root])
        lock.release()
    finally:
        holder.kill()
        holder.wait(timeout=HOLDER_TIMEOUT_SECONDS)
