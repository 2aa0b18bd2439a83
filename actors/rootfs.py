"""Overlay root filesystems for containers.

A container's root filesystem is an overlay: the image's directory is the
read-only lower layer, and the container's writes land in its own upper
directory. The functions here call mount(2) and umount2(2) through ctypes, so
errors carry the kernel's errno. They block, so async callers run them with
trio.to_thread.run_sync. All paths are host paths, in the daemon's mount
namespace.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
from pathlib import Path

from messages.errors import RuntimeFailed

logger = logging.getLogger(__name__)

# From <sys/mount.h>: detach the mount now, and free it once it is unused.
MNT_DETACH = 2

# mount(2) copies at most one page of option data, so longer options would be
# cut off silently. The last byte is the terminating NUL.
MAX_MOUNT_OPTIONS_BYTES = os.sysconf("SC_PAGE_SIZE") - 1

MOUNTINFO = "/proc/self/mountinfo"

# The kernel writes a space, tab, newline or backslash in a mountinfo field as
# a backslash and three octal digits.
_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.mount.restype = ctypes.c_int
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.umount2.restype = ctypes.c_int
    return libc


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount an overlay of `upper` on `lower` at `target`.

    `work` is overlayfs's scratch directory: empty, and on the same filesystem
    as `upper`. All four directories must exist. Raises RuntimeFailed naming
    the target and the errno.
    """
    options = ",".join(
        (
            f"lowerdir={_escape_option_path(lower)}",
            f"upperdir={_escape_option_path(upper)}",
            f"workdir={_escape_option_path(work)}",
        )
    )
    data = os.fsencode(options)
    if len(data) > MAX_MOUNT_OPTIONS_BYTES:
        raise RuntimeFailed(
            f"cannot mount an overlay at {target}: its options are {len(data)} "
            f"bytes, more than the {MAX_MOUNT_OPTIONS_BYTES} bytes that mount(2) "
            "accepts. Move the daemon's data root to a shorter path."
        )

    libc = _libc()
    if libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, data) != 0:
        code = ctypes.get_errno()
        raise RuntimeFailed(
            f"mounting an overlay at {target} (lowerdir={lower}, upperdir={upper}, "
            f"workdir={work}) failed: {_errno_text(code)}. {_mount_hint(code)}"
        )
    logger.debug("mounted overlay at %s", target)


def unmount(target: Path) -> None:
    """Unmount the topmost mount at `target`, or do nothing when none is there.

    A mount that is busy is detached with MNT_DETACH instead, and the kernel
    frees it once its last user is gone. Raises RuntimeFailed naming the
    target and the errno.
    """
    libc = _libc()
    path = os.fsencode(target)
    if libc.umount2(path, 0) == 0:
        logger.debug("unmounted %s", target)
        return

    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT) and not is_mounted(target):
        logger.debug("nothing to unmount at %s (%s)", target, _errno_text(code))
        return
    if code != errno.EBUSY:
        raise RuntimeFailed(f"unmounting {target} failed: {_errno_text(code)}")

    if libc.umount2(path, MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise RuntimeFailed(
            f"unmounting {target} failed: it is busy, and detaching it failed "
            f"too: {_errno_text(code)}"
        )
    logger.warning("%s was busy, so it was detached (MNT_DETACH)", target)


def is_mounted(target: Path) -> bool:
    """Return whether `target`, with symlinks resolved, is a mount point."""
    return os.fsencode(os.path.realpath(target)) in mount_points()


def mount_points() -> set[bytes]:
    """Return the mount points of this process's mount namespace, one read."""
    points: set[bytes] = set()
    with open(MOUNTINFO, "rb") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, relative to the process's root.
            fields = line.split(b" ")
            if len(fields) > 4:
                points.add(_unescape_mountinfo(fields[4]))
    return points


def _escape_option_path(path: Path) -> str:
    """Escape the characters that overlayfs options treat as separators."""
    text = os.fspath(path)
    for special in ("\\", ",", ":"):
        text = text.replace(special, "\\" + special)
    return text


def _unescape_mountinfo(field: bytes) -> bytes:
    return _MOUNTINFO_ESCAPE.sub(lambda match: bytes([int(match[1], 8)]), field)


def _errno_text(code: int) -> str:
    name = errno.errorcode.get(code, "unknown errno")
    return f"{os.strerror(code)} ({name})"


def _mount_hint(code: int) -> str:
    if code == errno.ENOENT:
        return "Create the missing directory first."
    if code == errno.EPERM:
        return "Run the daemon as root, which mounting overlays requires."
    if code == errno.ENODEV:
        return "Load the overlay kernel module (modprobe overlay)."
    if code == errno.EINVAL:
        return (
            "Check that upperdir and workdir are on the same filesystem and "
            "that neither is inside the other. The kernel log (dmesg) names "
            "the cause."
        )
    return "The kernel log (dmesg) may name the cause."
