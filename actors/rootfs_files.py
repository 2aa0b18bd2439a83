"""Reading files of a container's root filesystem from the host.

An image is untrusted: its /etc/passwd may be a symlink to an absolute
path, which on the host would name a host file. Paths are therefore
resolved component by component with every symlink interpreted inside the
container's root, as the container itself would see it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

import trio

from messages.users import ResolvedUser, resolve_user

# Linux's own limit on symlinks followed in one lookup.
MAX_SYMLINKS = 40
# Larger account files are not real account databases.
MAX_FILE_SIZE = 4 * 1024 * 1024


def resolve_in_root(root: Path, path: str) -> Path | None:
    """Resolve `path` inside `root`; None if it does not exist or loops."""
    pending = [part for part in path.split("/") if part]
    resolved: list[str] = []
    followed = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return None
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            return None
        target = os.readlink(candidate)
        if posixpath.isabs(target):
            resolved = []
        pending = [piece for piece in target.split("/") if piece] + pending
    return root.joinpath(*resolved)


def read_text_in_root(root: Path, path: str) -> str | None:
    """Return a regular file's text from inside `root`, or None if it is absent."""
    resolved = resolve_in_root(root, path)
    if resolved is None:
        return None
    try:
        descriptor = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_SIZE:
            return None
        return file.read(MAX_FILE_SIZE).decode("utf-8", errors="replace")


async def resolve_container_user(root: Path, spec: str) -> ResolvedUser:
    """Resolve a `--user` value against the container's own account files."""
    return await trio.to_thread.run_sync(read_container_user, root, spec)


def read_container_user(root: Path, spec: str) -> ResolvedUser:
    """Resolve a `--user` value as resolve_container_user does, blocking."""
    passwd = read_text_in_root(root, "/etc/passwd")
    group = read_text_in_root(root, "/etc/group")
    return resolve_user(spec, passwd, group)
