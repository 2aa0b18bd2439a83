"""Build a minimal busybox root filesystem tarball from the host's static busybox.

This is a setup tool, so it may block: it runs `busybox --list` once with
subprocess. The tarball is deterministic for a given busybox binary (fixed
mtimes, owners and member order), so importing it twice yields one image id.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from actors.images import ImageStore
from messages.errors import InvalidRequest
from messages.images import ImageRecord

BUSYBOX_PATH = Path("/usr/bin/busybox")
BUSYBOX_REFERENCE = "busybox:latest"
# The PATH and command that Docker Hub's busybox image sets.
BUSYBOX_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["sh"]',
)
INSTALL_HINT = "Install a static busybox with `apt-get install busybox-static`."
# Every member gets this mtime (2000-01-01T00:00:00Z), so the bytes, and with them
# the image id, depend only on the busybox binary.
FIXED_MTIME = 946684800
LIST_TIMEOUT_SECONDS = 10.0
APP_UID = 1000
APP_GID = 1000
# An applet name becomes a file name in /bin, so it must be a single component.
APPLET_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.+\[\]-]+")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    f"app:x:{APP_UID}:{APP_GID}:app:/home/app:/bin/sh\n"
)
GROUP = f"root:x:0:\nnobody:x:65534:\napp:x:{APP_GID}:app\nstaff:x:50:app\n"
# (path, mode, uid, gid), parents before children.
DIRECTORIES = (
    ("bin", 0o755, 0, 0),
    ("dev", 0o755, 0, 0),
    ("etc", 0o755, 0, 0),
    ("home", 0o755, 0, 0),
    ("home/app", 0o755, APP_UID, APP_GID),
    ("proc", 0o555, 0, 0),
    ("root", 0o700, 0, 0),
    ("sys", 0o555, 0, 0),
    ("tmp", 0o1777, 0, 0),
)
# ELF constants from the System V ABI: e_ident offsets and the PT_INTERP type.
ELF_MAGIC = b"\x7fELF"
ELF_CLASS_64 = 2
ELF_DATA_LITTLE = 1
PT_INTERP = 3


def build_busybox_tar(busybox: Path = BUSYBOX_PATH) -> bytes:
    """Return an uncompressed tarball of a busybox root filesystem.

    It contains /bin/busybox, a symlink in /bin for each applet, /etc/passwd,
    /etc/group, an empty /etc/hostname and the usual empty directories. Raises
    InvalidRequest if ``busybox`` is missing or not statically linked.
    """
    content = _read_static_binary(busybox)
    applets = _list_applets(busybox)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, uid, gid in DIRECTORIES:
            tar.addfile(_header(path, tarfile.DIRTYPE, mode, uid, gid))
        _add_file(tar, "bin/busybox", content, 0o755)
        for applet in applets:
            link = _header(f"bin/{applet}", tarfile.SYMTYPE, 0o777, 0, 0)
            link.linkname = "busybox"
            tar.addfile(link)
        _add_file(tar, "etc/passwd", PASSWD.encode(), 0o644)
        _add_file(tar, "etc/group", GROUP.encode(), 0o644)
        _add_file(tar, "etc/hostname", b"", 0o644)
    return buffer.getvalue()


async def import_busybox(
    store: ImageStore,
    busybox: Path = BUSYBOX_PATH,
    *,
    reference: str = BUSYBOX_REFERENCE,
) -> ImageRecord:
    """Build the busybox tarball in a worker thread and import it into ``store``."""
    data = await trio.to_thread.run_sync(build_busybox_tar, busybox)
    return await store.import_tar(
        _chunks(data), reference=reference, changes=BUSYBOX_CHANGES
    )


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _header(name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.uname = ""
    info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def _add_file(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = _header(name, tarfile.REGTYPE, mode, 0, 0)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def _read_static_binary(busybox: Path) -> bytes:
    try:
        content = busybox.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(
            f"busybox not found at {str(busybox)!r}. {INSTALL_HINT}"
        ) from None
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read busybox at {str(busybox)!r}: {exc.strerror}. {INSTALL_HINT}"
        ) from exc
    try:
        interpreter = _elf_interpreter(content)
    except (ValueError, struct.error) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "a truncated ELF file"
        raise InvalidRequest(
            f"busybox at {str(busybox)!r} is {reason}. {INSTALL_HINT}"
        ) from exc
    if interpreter is not None:
        raise InvalidRequest(
            f"busybox at {str(busybox)!r} is dynamically linked (it needs "
            f"{interpreter!r}), so it cannot run in an image without its libraries. "
            f"{INSTALL_HINT}"
        )
    return content


def _elf_interpreter(content: bytes) -> str | None:
    """Return the PT_INTERP path of an ELF file, or None for a static one.

    Raises ValueError if ``content`` is not a 64-bit little-endian ELF file,
    and struct.error if it is truncated.
    """
    if content[:4] != ELF_MAGIC or len(content) < 64:
        raise ValueError("not an ELF executable")
    if content[4] != ELF_CLASS_64 or content[5] != ELF_DATA_LITTLE:
        raise ValueError("not a 64-bit little-endian ELF executable")
    # e_phoff at 0x20, e_phentsize and e_phnum at 0x36 in the ELF64 header.
    (program_headers,) = struct.unpack_from("<Q", content, 0x20)
    entry_size, count = struct.unpack_from("<HH", content, 0x36)
    for index in range(count):
        offset = program_headers + index * entry_size
        # p_type at 0, p_offset at 8 and p_filesz at 32 in an ELF64 program header.
        (segment_type,) = struct.unpack_from("<I", content, offset)
        if segment_type == PT_INTERP:
            (start,) = struct.unpack_from("<Q", content, offset + 8)
            (length,) = struct.unpack_from("<Q", content, offset + 32)
            return (
                content[start : start + length].rstrip(b"\0").decode(errors="replace")
            )
    return None


def _list_applets(busybox: Path) -> tuple[str, ...]:
    try:
        result = subprocess.run(
            [str(busybox), "--list"],
            capture_output=True,
            check=True,
            text=True,
            timeout=LIST_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise InvalidRequest(
            f"`{busybox} --list` failed: {exc}. {INSTALL_HINT}"
        ) from exc
    applets = set()
    for line in result.stdout.splitlines():
        applet = line.strip()
        if applet == "busybox" or applet in ("", ".", ".."):
            continue
        if APPLET_NAME_PATTERN.fullmatch(applet) is None:
            raise InvalidRequest(
                f"`{busybox} --list` printed the applet name {applet!r}, "
                f"which cannot be a file name in /bin. {INSTALL_HINT}"
            )
        applets.add(applet)
    return tuple(sorted(applets))
