"""The wrapper store: idempotent content-addressed writes, collection at start only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from actors.wrappers import WrapperStore
from messages.wrapper import wrapper_file_name, wrapper_script


async def test_install_writes_once(tmp_path: Path) -> None:
    store = WrapperStore(tmp_path / "runtimes")
    content = wrapper_script("/usr/sbin/runc", ("--debug",))
    path, created = await store.install("fast", content)
    assert created
    assert Path(path).name == wrapper_file_name("fast", content)
    assert Path(path).read_bytes() == content
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    inode = os.stat(path).st_ino
    again, created_again = await store.install("fast", content)
    assert again == path
    assert not created_again
    assert os.stat(path).st_ino == inode


async def test_install_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = WrapperStore(tmp_path / "runtimes")
    for args in (("-a",), ("-b",), ("-c",)):
        await store.install("fast", wrapper_script("/usr/sbin/runc", args))
    names = sorted(entry.name for entry in store.directory.iterdir())
    assert len(names) == 3
    assert not any(name.startswith(".") for name in names)


async def test_collect_keeps_referenced_wrappers(tmp_path: Path) -> None:
    store = WrapperStore(tmp_path / "runtimes")
    kept, _ = await store.install("fast", wrapper_script("/usr/sbin/runc", ("-a",)))
    stale, _ = await store.install("fast", wrapper_script("/usr/sbin/runc", ("-b",)))
    stray = store.directory / ".fast.tmp123"
    stray.write_text("half")
    unrelated = store.directory / "README"
    unrelated.write_text("not a wrapper")
    removed = store.collect([kept])
    assert sorted(removed) == sorted([stale, str(stray)])
    assert Path(kept).exists()
    assert unrelated.exists()


def test_collect_without_directory(tmp_path: Path) -> None:
    assert WrapperStore(tmp_path / "absent").collect([]) == []
