"""The image store: imports root filesystem tarballs and keeps their records.

The store owns ``<data-root>/images/``:

    <hex>/rootfs/       the unpacked root filesystem
    <hex>/image.json    the ImageRecord (see messages.images)
    .import-*/          staging for an import in progress
    .remove-*/          an image directory being deleted

Invariants:

- Nothing is unpacked before the whole archive has been read and checked:
  every member header passed `messages.images.check_members`, the owner
  check and the limits against decompression bombs, and only zero bytes
  follow the last member. A rejected or failed import removes its staging
  directory, so it leaves nothing behind.
- Unpacking never follows a symlink. Each parent directory is opened with
  O_NOFOLLOW relative to the descriptor of its own parent, so a link cannot
  redirect a write even if the checks had missed it.
- An image directory appears whole: the staging directory, with rootfs and
  image.json, is renamed into place. Records are rewritten with
  `actors.atomic.write_atomically` (temporary file, fsync, rename).
- A tag names at most one image. Moving a tag first rewrites the old record,
  so a crash between the two writes loses the tag instead of leaving it on two
  images.
- The store root has mode 0700, because image root filesystems may contain
  setuid binaries that host users must not reach.

One trio.Lock serializes changes to the records. Receiving and unpacking a
tarball happen outside it, so several imports proceed at once. Blocking file
work runs in worker threads.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeAlias

import attrs
import trio

from actors.atomic import write_atomically
from messages.errors import Conflict, DockyardError, InvalidRequest, NotFound
from messages.images import (
    HEX_DIGEST_PATTERN,
    MAX_IMAGE_BYTES,
    ROOT,
    CheckedMember,
    ImageRecord,
    ImageRemoval,
    MemberKind,
    apply_changes,
    check_archive_totals,
    check_extended_header,
    check_member_owner,
    check_members,
    decode_image_record,
    encode_image_record,
    find_image,
    member_kind,
    normalize_reference,
)

logger = logging.getLogger(__name__)

# The store's directory under the data root.
IMAGES_DIRECTORY = "images"

ImageSource: TypeAlias = trio.abc.ReceiveStream | AsyncIterator[bytes]

RECORD_NAME = "image.json"
ROOTFS_NAME = "rootfs"
ARCHIVE_NAME = "layer.tar"
STAGING_PREFIX = ".import-"
REMOVING_PREFIX = ".remove-"
STORE_MODE = 0o700
# Received chunks are batched so that each hop to a worker thread writes up to
# 1 MiB instead of one small network chunk.
WRITE_BATCH_BYTES = 1 << 20
RECEIVE_CHUNK_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 1 << 20
# Mode for directories while unpacking. Each directory gets its own mode from
# its member once everything below it is written.
UNPACK_DIRECTORY_MODE = 0o755
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What Python's decompressors raise for corrupt or truncated input. gzip and
# bz2 also raise OSError without an errno, and the missing errno
# distinguishes them from I/O errors.
_CORRUPT_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError)
# Stands in for the id while `--change` lines are checked, before the tarball
# has been received and hashed.
_PLACEHOLDER_ID = "sha256:" + "0" * 64


class ImageStore:
    """Images under one directory, with their records kept in memory after `load`."""

    def __init__(self, root: Path, *, now: Callable[[], float] = time.time) -> None:
        self.root = root
        self._now = now
        self._records: dict[str, ImageRecord] = {}
        self._lock = trio.Lock()

    async def load(self) -> None:
        """Read every image record, skipping and logging corrupt ones.

        Also removes staging and removal directories left by a crash. Call it
        once at daemon start, before any other method.
        """
        records = await trio.to_thread.run_sync(self._read_records)
        async with self._lock:
            self._records = _drop_duplicate_tags(records)
        logger.info("loaded %d images from %s", len(self._records), self.root)

    def list(self) -> tuple[ImageRecord, ...]:
        """Return all images, newest first."""
        return tuple(sorted(self._records.values(), key=lambda r: (-r.created, r.id)))

    def get(self, name: str) -> ImageRecord:
        """Look up an image by full id, tag or unique id prefix.

        Raises NotFound naming the reference.
        """
        return find_image(self._records.values(), name)

    def rootfs(self, image_id: str) -> Path:
        """Return the unpacked root filesystem of the image with this full id."""
        record = self._records.get(image_id)
        if record is None:
            raise NotFound(
                f"image id {image_id!r} not found. "
                "Run `docker images` to list the images this daemon has."
            )
        return self.root / record.hex / ROOTFS_NAME

    async def import_tar(
        self,
        source: ImageSource,
        *,
        reference: str | None = None,
        changes: Sequence[str] = (),
    ) -> ImageRecord:
        """Receive a root filesystem tarball, unpack it and record it as an image.

        The id is the SHA-256 digest of the bytes received, so the same tarball
        imported twice is one image, and the second import only adds its tag.
        ``reference`` tags the image, moving the tag from any other image.
        ``changes`` are `docker import --change` lines. Raises InvalidRequest
        for an invalid reference, change, archive or member, and Conflict if
        the image exists with a different config from the one ``changes`` set.
        """
        tag = normalize_reference(reference) if reference is not None else None
        template = apply_changes(
            ImageRecord(id=_PLACEHOLDER_ID, repo_tags=(), created=0.0, size=0),
            changes,
        )

        staging = await trio.to_thread.run_sync(self._make_staging_directory)
        try:
            digest = await _receive_to_file(source, staging / ARCHIVE_NAME)
            image_id = f"sha256:{digest}"
            size = None
            if image_id not in self._records:
                size = await trio.to_thread.run_sync(_unpack_staging, staging)

            async with self._lock:
                existing = self._records.get(image_id)
                if existing is not None:
                    return await self._merge_import(existing, template, changes, tag)
                if size is None:
                    # The image was removed while this import was receiving.
                    size = await trio.to_thread.run_sync(_unpack_staging, staging)
                record = attrs.evolve(
                    template,
                    id=image_id,
                    repo_tags=() if tag is None else (tag,),
                    created=self._now(),
                    size=size,
                )
                if tag is not None:
                    await self._untag_others(tag, keep=image_id)
                target = self.root / record.hex
                await trio.to_thread.run_sync(
                    _publish_image, staging, target, encode_image_record(record)
                )
                self._records[image_id] = record
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_tree, staging)

        logger.info(
            "imported image %s (%d bytes) tagged %s", record.id, size, tag or "<none>"
        )
        return record

    async def tag(self, name: str, reference: str) -> ImageRecord:
        """Tag the image that ``name`` resolves to, moving the tag from any other."""
        new_tag = normalize_reference(reference)
        async with self._lock:
            record = find_image(self._records.values(), name)
            if new_tag in record.repo_tags:
                return record
            await self._untag_others(new_tag, keep=record.id)
            record = attrs.evolve(record, repo_tags=(*record.repo_tags, new_tag))
            await self._save(record)
        logger.info("tagged image %s as %s", record.id, new_tag)
        return record

    async def remove(
        self, name: str, *, in_use: Callable[[str], bool], force: bool = False
    ) -> ImageRemoval:
        """Remove a tag, or the whole image when no other tag names it.

        Given a tag of an image that has other tags, only that tag goes. Given
        an id, or the last tag, the image is deleted. ``in_use`` receives the
        image id and returns whether a container uses the image. Raises
        Conflict if it does, or if ``name`` is an id of an image with several
        tags and ``force`` is false.
        """
        async with self._lock:
            record = find_image(self._records.values(), name)
            tag = _reference_or_none(name)
            by_tag = tag is not None and tag in record.repo_tags
            if tag is not None and by_tag and len(record.repo_tags) > 1:
                remaining = tuple(t for t in record.repo_tags if t != tag)
                await self._save(attrs.evolve(record, repo_tags=remaining))
                logger.info("untagged %s from image %s", tag, record.id)
                return ImageRemoval(untagged=(tag,), deleted=())

            if not by_tag and len(record.repo_tags) > 1 and not force:
                raise Conflict(
                    f"image {name!r} ({record.short_id}) has the tags "
                    f"{', '.join(record.repo_tags)}. Remove them one by one, "
                    "or force the removal (`docker rmi -f`)."
                )
            if in_use(record.id):
                raise Conflict(
                    f"image {name!r} ({record.short_id}) is used by a container. "
                    "Remove the container first (`docker rm`), then the image."
                )
            retired = await trio.to_thread.run_sync(
                _retire_directory, self.root / record.hex
            )
            del self._records[record.id]

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_tree, retired)
        logger.info("deleted image %s (tags: %s)", record.id, record.repo_tags)
        return ImageRemoval(untagged=record.repo_tags, deleted=(record.id,))

    async def _merge_import(
        self,
        existing: ImageRecord,
        template: ImageRecord,
        changes: Sequence[str],
        tag: str | None,
    ) -> ImageRecord:
        if changes and _config(template) != _config(existing):
            raise Conflict(
                f"image {existing.id} already exists with a different config "
                f"from the changes {list(changes)!r}. Remove the image first, or "
                "import it without --change."
            )
        if tag is None or tag in existing.repo_tags:
            return existing
        await self._untag_others(tag, keep=existing.id)
        record = attrs.evolve(existing, repo_tags=(*existing.repo_tags, tag))
        await self._save(record)
        logger.info("image %s imported again, now also tagged %s", record.id, tag)
        return record

    async def _untag_others(self, tag: str, *, keep: str) -> None:
        for record in tuple(self._records.values()):
            if record.id != keep and tag in record.repo_tags:
                remaining = tuple(t for t in record.repo_tags if t != tag)
                await self._save(attrs.evolve(record, repo_tags=remaining))
                logger.info("moved tag %s away from image %s", tag, record.id)

    async def _save(self, record: ImageRecord) -> None:
        path = self.root / record.hex / RECORD_NAME
        await trio.to_thread.run_sync(
            write_atomically, path, encode_image_record(record).encode()
        )
        self._records[record.id] = record

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=STORE_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, STORE_MODE)

    def _make_staging_directory(self) -> Path:
        self._ensure_root()
        return Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX))

    def _read_records(self) -> tuple[ImageRecord, ...]:
        self._ensure_root()
        records: builtins.list[ImageRecord] = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith((STAGING_PREFIX, REMOVING_PREFIX)):
                logger.warning(
                    "removing %s, left by an interrupted import or removal", entry
                )
                _remove_tree(entry)
            elif HEX_DIGEST_PATTERN.fullmatch(entry.name) is None:
                logger.warning("ignoring %s: not an image directory", entry)
            elif (record := _read_record(entry)) is not None:
                records.append(record)
        return tuple(records)


def _config(record: ImageRecord) -> tuple[object, ...]:
    return (record.env, record.cmd, record.entrypoint, record.working_dir, record.user)


def _reference_or_none(name: str) -> str | None:
    try:
        return normalize_reference(name)
    except InvalidRequest:
        return None


def _drop_duplicate_tags(records: Iterable[ImageRecord]) -> dict[str, ImageRecord]:
    """Keep each tag on the newest image that claims it, logging the others.

    Two records claim one tag only if they were edited by hand, because a tag
    move rewrites the old record first.
    """
    owners: dict[str, str] = {}
    result: dict[str, ImageRecord] = {}
    for record in sorted(records, key=lambda r: (-r.created, r.id)):
        kept = []
        for tag in record.repo_tags:
            if tag in owners:
                logger.warning(
                    "tag %s is on images %s and %s, so it stays on the newer %s",
                    tag,
                    owners[tag],
                    record.id,
                    owners[tag],
                )
            else:
                owners[tag] = record.id
                kept.append(tag)
        result[record.id] = attrs.evolve(record, repo_tags=tuple(kept))
    return result


def _read_record(directory: Path) -> ImageRecord | None:
    """Read one image directory's record, or log why it is skipped and return None."""
    path = directory / RECORD_NAME
    for leftover in directory.glob(f".{RECORD_NAME}.*"):
        leftover.unlink()
    try:
        record = decode_image_record(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning(
            "skipping image directory %s: cannot read %s: %s", directory, path, exc
        )
        return None
    if record.hex != directory.name:
        logger.warning(
            "skipping image directory %s: its record has the id %s",
            directory,
            record.id,
        )
        return None
    rootfs = directory / ROOTFS_NAME
    if not (rootfs.exists() and stat.S_ISDIR(rootfs.lstat().st_mode)):
        logger.warning("skipping image directory %s: %s is missing", directory, rootfs)
        return None
    return record


# --- Receiving ---------------------------------------------------------------------


class _HashingWriter:
    """Writes chunks to a file from worker threads while computing their SHA-256."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._digest = hashlib.sha256()
        self._pending = bytearray()

    async def add(self, chunk: bytes | bytearray) -> None:
        self._pending += chunk
        if len(self._pending) >= WRITE_BATCH_BYTES:
            await self._write_pending()

    async def finish(self) -> str:
        await self._write_pending()
        await trio.to_thread.run_sync(self._file.flush)
        return self._digest.hexdigest()

    async def _write_pending(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        await trio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)


def _open_new_file(path: Path) -> BinaryIO:
    return path.open("xb")


async def _receive_to_file(source: ImageSource, path: Path) -> str:
    """Write everything ``source`` yields to a new file and return its SHA-256 hex."""
    file = await trio.to_thread.run_sync(_open_new_file, path)
    try:
        writer = _HashingWriter(file)
        if isinstance(source, trio.abc.ReceiveStream):
            while chunk := await source.receive_some(RECEIVE_CHUNK_BYTES):
                await writer.add(chunk)
        else:
            async for chunk in source:
                await writer.add(chunk)
        return await writer.finish()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(file.close)


# --- Unpacking (runs in a worker thread) ----------------------------------------


def _unpack_staging(staging: Path) -> int:
    """Unpack ``staging/layer.tar`` into ``staging/rootfs``, then delete the archive.

    Returns the bytes of regular file content written. Raises InvalidRequest,
    before anything is written, for an archive that is not a valid tar
    archive, whose compressed data is corrupt or truncated, that breaks a
    member rule or a limit, or that has data after its last member.
    """
    archive = staging / ARCHIVE_NAME
    try:
        with tarfile.open(archive, mode="r:*", tarinfo=_LimitedTarInfo) as tar:
            infos = _read_headers(tar)
            _check_end_of_archive(tar, infos)
            checked = check_members(
                (info.name, member_kind(info.type), info.linkname) for info in infos
            )
            rootfs = staging / ROOTFS_NAME
            os.mkdir(rootfs, UNPACK_DIRECTORY_MODE)
            size = _write_members(tar, list(zip(infos, checked, strict=True)), rootfs)
    except tarfile.TarError as exc:
        raise InvalidRequest(
            f"invalid image archive: it is not a valid tar archive ({exc}). "
            "Send an uncompressed, gzip, bzip2 or xz tar archive."
        ) from exc
    except _CORRUPT_STREAM_ERRORS as exc:
        raise _corrupt_stream_error(exc) from exc
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise _corrupt_stream_error(exc) from exc
    archive.unlink()
    return size


_EXTENDED_HEADER_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


class _LimitedTarInfo(tarfile.TarInfo):
    """A TarInfo that rejects an oversized extended header before tarfile reads it.

    tarfile reads a PAX header or a GNU long name into memory whole, so without
    this check a small compressed archive could make it allocate gigabytes.
    ``_proc_member`` is the hook that tarfile's source (CPython 3.11) names for
    subclasses.
    """

    # NOTE: sparse maps are not bounded. tarfile reads the map of an old GNU
    # sparse member or of a PAX 1.0 sparse member into memory whole.
    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADER_TYPES:
            check_extended_header(self.offset, self.size)
        result: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return result


def _corrupt_stream_error(exc: Exception) -> InvalidRequest:
    return InvalidRequest(
        f"invalid image archive: the compressed data is corrupt or truncated "
        f"({type(exc).__name__}: {exc}). Test the file with `gzip -t`, "
        "`bzip2 -t` or `xz -t`, and send a complete copy."
    )


def _read_headers(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Read every member header, checking owners and limits after each one.

    Raising at the first header past a limit stops tarfile before it
    decompresses that member's data.
    """
    infos: list[tarfile.TarInfo] = []
    size = 0
    for info in tar:
        infos.append(info)
        # Every size counts, not only those of regular files, because tarfile
        # also skips over the data of a member of an unknown type, and for
        # compressed input that means decompressing it. check_members rejects
        # such members only later.
        size += info.size
        check_archive_totals(len(infos), size)
        check_member_owner(info.name, info.uid, info.gid)
    return infos


def _check_end_of_archive(
    tar: tarfile.TarFile, infos: Sequence[tarfile.TarInfo]
) -> None:
    """Raise InvalidRequest unless only zero bytes follow the last member.

    tarfile (CPython 3.11) raises for an invalid header only at offset 0.
    Anywhere else it ends the member list there without an error, so a
    damaged header would import as a truncated image. The end-of-archive
    blocks and the record padding are zero bytes, and anything else after the
    last member is a damaged header or data appended after the end, such as a
    second archive joined with `cat`.

    For gzip, bzip2 and xz input, tarfile reads through a decompressor, so the
    offsets count bytes of the uncompressed tar data. Reading it to the end
    also makes the decompressor check the whole stream: a CRC mismatch or a
    truncated stream raises, and the caller rejects the import.
    """
    stream = tar.fileobj
    assert stream is not None
    # tarfile has already read the block at tar.offset while looking for a
    # header. A decompressor seeks back to it within its read buffer, or else
    # decompresses again from the start.
    stream.seek(tar.offset)
    offset = tar.offset
    while chunk := stream.read(COPY_CHUNK_BYTES):
        rest = chunk.lstrip(b"\0")
        if rest:
            bad_offset = offset + len(chunk) - len(rest)
            where = f"after member {infos[-1].name!r}" if infos else "before any member"
            raise InvalidRequest(
                f"invalid image archive: the tar data is corrupt at byte offset "
                f"{bad_offset} of the uncompressed archive, {where}. Only zero "
                "bytes may follow the last member, so this is a damaged header "
                "or data appended after the end of the archive. List the "
                "archive with `tar -tvf` to find the damage, and create it again."
            )
        offset += len(chunk)
        # A stream of compressed zeros would otherwise keep a worker thread
        # decompressing without end.
        if offset - tar.offset > MAX_IMAGE_BYTES:
            raise InvalidRequest(
                f"invalid image archive: more than {MAX_IMAGE_BYTES:,} bytes of "
                "padding follow the last member, the same maximum as for the "
                "unpacked size of one image. Create the archive again without "
                "the extra padding."
            )
    # NOTE: Python's bz2 and xz readers, unlike gzip, skip bytes after the end
    # of the compressed stream, so such bytes are neither unpacked nor rejected.


def _write_members(
    tar: tarfile.TarFile,
    members: list[tuple[tarfile.TarInfo, CheckedMember]],
    rootfs: Path,
) -> int:
    # NOTE: without root the daemon cannot chown, so files keep its own uid and
    # gid. PAX extended attributes (such as file capabilities) are not restored.
    change_owner = os.geteuid() == 0
    size = 0
    directories: dict[PurePosixPath, tarfile.TarInfo] = {}
    root_fd = os.open(rootfs, _DIRECTORY_FLAGS)
    try:
        for info, member in members:
            try:
                if member.path == ROOT:
                    continue
                if member.kind is MemberKind.DIRECTORY:
                    directories[member.path] = info
                size += _write_member(
                    tar, info, member, root_fd, change_owner, MAX_IMAGE_BYTES - size
                )
            except (OverflowError, ValueError) as exc:
                raise _header_value_error(info, exc) from exc
            except OSError as exc:
                raise DockyardError(
                    f"failed to unpack tar member {info.name!r}: {exc}. "
                    f"Check the free space and permissions under {rootfs.parent}."
                ) from exc

        # Deepest first, so that a read-only directory cannot block its children.
        for path in sorted(directories, key=lambda p: len(p.parts), reverse=True):
            info = directories[path]
            try:
                _set_directory_metadata(root_fd, path, info, change_owner)
            except (OverflowError, ValueError) as exc:
                raise _header_value_error(info, exc) from exc
    finally:
        os.close(root_fd)
    # Flush the unpacked files before the image is published, so that a crash
    # cannot leave a recorded image with empty files.
    os.sync()
    return size


def _header_value_error(info: tarfile.TarInfo, exc: Exception) -> InvalidRequest:
    # The system calls raise OverflowError or ValueError only for header values
    # they cannot represent. The owner check has passed, so the value at fault
    # is the mtime, for example 1e300 or NaN from a PAX header.
    return InvalidRequest(
        f"invalid tar member {info.name!r}: its modification time {info.mtime!r} "
        f"or another header value is out of range for this system ({exc}). "
        "Create the tarball again with ordinary timestamps."
    )


def _write_member(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    member: CheckedMember,
    root_fd: int,
    change_owner: bool,
    max_bytes: int,
) -> int:
    """Create one member under its parent directory and return its content size.

    Raises InvalidRequest if a regular file has more than ``max_bytes`` of
    content.
    """
    name = member.path.name
    parent_fd = _open_parent(root_fd, member.path, info.name, create=True)
    try:
        if member.kind is MemberKind.DIRECTORY:
            _make_directory(parent_fd, name)
            return 0
        _remove_non_directory(parent_fd, name, info.name)
        if member.kind is MemberKind.FILE:
            return _write_file(tar, info, parent_fd, name, change_owner, max_bytes)
        if member.kind is MemberKind.SYMLINK:
            os.symlink(info.linkname, name, dir_fd=parent_fd)
            if change_owner:
                os.chown(
                    name, info.uid, info.gid, dir_fd=parent_fd, follow_symlinks=False
                )
            os.utime(
                name,
                (info.mtime, info.mtime),
                dir_fd=parent_fd,
                follow_symlinks=False,
            )
            return 0
        assert member.hardlink_target is not None
        target = member.hardlink_target
        source_fd = _open_parent(root_fd, target, info.name, create=False)
        try:
            os.link(
                target.name,
                name,
                src_dir_fd=source_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        finally:
            os.close(source_fd)
        return 0
    finally:
        os.close(parent_fd)


def _write_file(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    parent_fd: int,
    name: str,
    change_owner: bool,
    max_bytes: int,
) -> int:
    """Write one regular file and return the bytes of content written."""
    source = tar.extractfile(info)
    if source is None:
        raise InvalidRequest(f"tar member {info.name!r} has no readable content.")
    fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
    written = 0
    with os.fdopen(fd, "wb") as target, source:
        # The headers passed check_archive_totals, so this check fires only if
        # tarfile yields more content than the headers declare.
        while chunk := source.read(COPY_CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise InvalidRequest(
                    f"invalid image archive: member {info.name!r} takes the "
                    f"unpacked content past {MAX_IMAGE_BYTES:,} bytes, the maximum "
                    "unpacked size of one image. Import a smaller root filesystem."
                )
            target.write(chunk)
        target.flush()
        _set_metadata(target.fileno(), info, change_owner)
    return written


def _set_metadata(fd: int, info: tarfile.TarInfo, change_owner: bool) -> None:
    # chown clears the setuid and setgid bits, so it goes before chmod.
    if change_owner:
        os.fchown(fd, info.uid, info.gid)
    os.fchmod(fd, info.mode & 0o7777)
    os.utime(fd, (info.mtime, info.mtime))


def _set_directory_metadata(
    root_fd: int, path: PurePosixPath, info: tarfile.TarInfo, change_owner: bool
) -> None:
    parent_fd = _open_parent(root_fd, path, info.name, create=False)
    try:
        fd = _open_directory(parent_fd, path.name, info.name, create=False)
    finally:
        os.close(parent_fd)
    try:
        _set_metadata(fd, info, change_owner)
    finally:
        os.close(fd)


def _open_parent(
    root_fd: int, path: PurePosixPath, member: str, *, create: bool
) -> int:
    """Open the parent directory of ``path`` without following any symlink."""
    fd = os.dup(root_fd)
    try:
        for part in path.parent.parts:
            child_fd = _open_directory(fd, part, member, create=create)
            os.close(fd)
            fd = child_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_directory(dir_fd: int, name: str, member: str, *, create: bool) -> int:
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        # O_NOFOLLOW makes a symlink fail with ELOOP, and O_DIRECTORY makes a
        # file fail with ENOTDIR. `check_members` should have caught both.
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise InvalidRequest(
            f"invalid tar member {member!r}: its parent {name!r} is not a "
            f"directory ({exc.strerror}), and Dockyard never writes through a link."
        ) from exc
    os.mkdir(name, UNPACK_DIRECTORY_MODE, dir_fd=dir_fd)
    return os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)


def _make_directory(parent_fd: int, name: str) -> None:
    try:
        existing = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(existing.st_mode):
            return
        os.unlink(name, dir_fd=parent_fd)
    os.mkdir(name, UNPACK_DIRECTORY_MODE, dir_fd=parent_fd)


def _remove_non_directory(parent_fd: int, name: str, member: str) -> None:
    """Unlink an earlier member at this path, so that a later member replaces it."""
    try:
        existing = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise InvalidRequest(
            f"invalid tar member {member!r}: it would replace a directory."
        )
    os.unlink(name, dir_fd=parent_fd)


# --- Publishing and removal ---------------------------------------------------------


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_image(staging: Path, target: Path, record_text: str) -> None:
    """Write the record into the staging directory and rename it to ``target``."""
    write_atomically(staging / RECORD_NAME, record_text.encode())
    if target.exists():
        # Only a directory that `load` skipped as corrupt can be here, because
        # the caller holds the lock and found no record for this id.
        logger.warning("replacing unreadable image directory %s", target)
        _remove_tree(_retire_directory(target))
    os.rename(staging, target)
    _fsync_directory(target.parent)


def _retire_directory(directory: Path) -> Path:
    """Rename a directory out of the way, so that a crash leaves no half image."""
    retired = Path(
        tempfile.mkdtemp(
            dir=directory.parent, prefix=f"{REMOVING_PREFIX}{directory.name}-"
        )
    )
    os.rename(directory, retired / directory.name)
    return retired


def _remove_tree(path: Path) -> None:
    # shutil.rmtree does not follow symlinks inside the tree.
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)
