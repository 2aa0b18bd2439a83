"""Image records, image references and the safety rules for imported tar members.

An image is a root filesystem unpacked from a tarball plus a small config. Its id
is ``sha256:<hex>`` of the tarball bytes as received, so importing the same bytes
twice yields the same image. Tags live in the records, and a tag names at most
one image.

Rules for tar members, enforced here before the importer writes anything:

1. A member name is relative. After dropping ``.`` components and applying
   ``..`` lexically, it stays inside the image root.
2. A hard link names an earlier regular file of the same archive, by a name that
   obeys rule 1.
3. A symlink may point anywhere, including an absolute target such as
   ``/bin/busybox``. The container resolves it inside its own root at run time.
   The importer never follows a link while writing, so what matters is rule 4.
4. No member may have an earlier symlink or file as an ancestor. Otherwise a
   member ``evil -> /etc`` followed by ``evil/passwd`` would write on the host.
5. A directory is never replaced by another kind of member. That would delete
   its earlier children.
6. Only regular files, directories, symlinks and hard links are imported.
   Device nodes and FIFOs from a tarball are rejected. A container gets its
   devices from the runtime, not from its image.
7. A member's uid and gid are between 0 and MAX_OWNER_ID, the ids that
   chown(2) can set on Linux.
8. An archive has at most MAX_IMAGE_MEMBERS members, their sizes add up to
   at most MAX_IMAGE_BYTES, and no PAX or GNU extended header is larger than
   MAX_EXTENDED_HEADER_BYTES. These limits stop decompression bombs.

Code that reads files of an unpacked root filesystem on the host (for example
``etc/passwd`` to resolve a user) must resolve symlinks inside that root too,
because ``etc/passwd -> /etc/shadow`` is a valid member.
"""

from __future__ import annotations

import enum
import json
import posixpath
import re
import shlex
import tarfile
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

import attrs
import cattrs

from messages.errors import InvalidRequest, NotFound

DEFAULT_TAG = "latest"

# Image ids are the SHA-256 digest of the imported tarball.
IMAGE_ID_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
HEX_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# An id prefix, as `docker images` prints it (12 hex digits) or shorter.
ID_PREFIX_PATTERN = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")

# The reference grammar of github.com/distribution/reference v0.5.0: lowercase
# path components joined by ".", "_", "__" or dashes, an optional registry host
# (with port) in front, and a tag of at most 128 characters.
PATH_COMPONENT_PATTERN = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
DOMAIN_PATTERN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?"
)
TAG_PATTERN = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# NameTotalLengthMax of the same package: the repository name, host included.
MAX_REPOSITORY_LENGTH = 255
# Docker Hub prefixes that the docker CLI treats as implied, so that
# "docker.io/library/busybox" and "busybox" name the same tag.
DOCKER_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/")
DOCKER_HUB_HOSTS = ("docker.io/", "index.docker.io/")

# Instructions that `docker import --change` may carry and that an ImageRecord stores.
SUPPORTED_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "USER", "WORKDIR")


def _validate_image_id(_instance: object, _attribute: object, value: str) -> None:
    if IMAGE_ID_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"image id {value!r} is not of the form sha256:<64 hex digits>"
        )


@attrs.frozen
class ImageRecord:
    """An imported image, as stored in ``<data-root>/images/<hex>/image.json``."""

    id: str = attrs.field(validator=_validate_image_id)  # "sha256:<hex>" of the tarball
    repo_tags: tuple[str, ...]  # normalized "repo:tag" references
    created: float  # Unix time in seconds of the first import
    size: int  # bytes of regular file content unpacked
    env: tuple[str, ...] = ()  # "KEY=value" entries
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @property
    def hex(self) -> str:
        """Digest without the ``sha256:`` prefix, used as the directory name."""
        return self.id.removeprefix("sha256:")

    @property
    def short_id(self) -> str:
        """First 12 hex digits of the id, as `docker images` prints it."""
        return self.hex[:12]


@attrs.frozen
class ImageRemoval:
    """Outcome of removing an image reference, as `docker rmi` reports it."""

    untagged: tuple[str, ...]
    deleted: tuple[str, ...]


# --- The image.json converter -------------------------------------------------


def _structure_str(value: Any, _type: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _structure_int(value: Any, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _structure_float(value: Any, _type: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _structure_strings(value: Any, _type: object) -> tuple[str, ...]:
    # cattrs alone would turn the string "sh" into ("s", "h").
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(_structure_str(item, str) for item in value)


def _is_strings(type_: object) -> bool:
    return type_ == tuple[str, ...]


def _make_record_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(_is_strings, _structure_strings)
    converter.register_unstructure_hook_func(_is_strings, list)
    return converter


# The converter for image.json files: strict types, unknown keys ignored.
record_converter = _make_record_converter()


def encode_image_record(record: ImageRecord) -> str:
    """Serialize a record as the text of its image.json file."""
    return (
        json.dumps(record_converter.unstructure(record), indent=2, sort_keys=True)
        + "\n"
    )


def decode_image_record(text: str) -> ImageRecord:
    """Parse the text of an image.json file.

    Raises ValueError, with the reason, for invalid JSON, a missing or mistyped
    field, an invalid id or an invalid tag.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        record = record_converter.structure(data, ImageRecord)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        details = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ValueError(f"invalid image record: {details}") from exc
    for tag in record.repo_tags:
        try:
            normalized = normalize_reference(tag)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from exc
        if normalized != tag:
            raise ValueError(f"tag {tag!r} is not normalized (expected {normalized!r})")
    return record


# --- References ------------------------------------------------------------------


def _split_domain(name: str) -> tuple[str, str]:
    """Split ``host[:port]/path`` into host and path, the way Docker decides it.

    The first component is a registry host only if it contains "." or ":", is
    "localhost", or has uppercase letters. Otherwise it is part of the path.
    """
    first, slash, rest = name.partition("/")
    if slash and (
        any(c in first for c in ".:") or first == "localhost" or first != first.lower()
    ):
        return first, rest
    return "", name


def parse_reference(ref: str) -> tuple[str, str]:
    """Split an image reference into repository and tag.

    The tag defaults to "latest". Docker Hub prefixes are dropped, so
    "docker.io/library/busybox:1.36" returns ("busybox", "1.36"). Raises
    InvalidRequest naming the reference if it is not a valid reference or if it
    carries a digest, which this daemon cannot resolve.
    """
    hint = "Use a lowercase name like 'busybox' or 'example.com/team/app:1.0'."
    if not ref:
        raise InvalidRequest(f"invalid image reference {ref!r}: it is empty. {hint}")
    if "@" in ref:
        raise InvalidRequest(
            f"invalid image reference {ref!r}: digest references are not supported. "
            "Refer to the image by tag or by id."
        )

    name, tag = ref, DEFAULT_TAG
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        name, tag = ref[:colon], ref[colon + 1 :]
        if TAG_PATTERN.fullmatch(tag) is None:
            raise InvalidRequest(
                f"invalid image reference {ref!r}: tag {tag!r} must be 1 to 128 "
                "letters, digits, '_', '.' or '-', and must not start with '.' or '-'."
            )

    domain, path = _split_domain(name)
    if domain and DOMAIN_PATTERN.fullmatch(domain) is None:
        raise InvalidRequest(
            f"invalid image reference {ref!r}: {domain!r} is not a valid "
            f"registry host. {hint}"
        )
    for component in path.split("/"):
        if PATH_COMPONENT_PATTERN.fullmatch(component) is not None:
            continue
        if component.lower() != component and PATH_COMPONENT_PATTERN.fullmatch(
            component.lower()
        ):
            raise InvalidRequest(
                f"invalid image reference {ref!r}: repository names must be "
                f"lowercase. {hint}"
            )
        raise InvalidRequest(
            f"invalid image reference {ref!r}: {component!r} is not a valid "
            f"name component. {hint}"
        )
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise InvalidRequest(
            f"invalid image reference {ref!r}: the repository name is longer "
            f"than {MAX_REPOSITORY_LENGTH} characters."
        )
    if HEX_DIGEST_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"invalid image reference {ref!r}: a repository name cannot be "
            "64 hex digits, because it would read as an image id."
        )

    for prefix in (*DOCKER_HUB_PREFIXES, *DOCKER_HUB_HOSTS):
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            break
    return name, tag


def normalize_reference(ref: str) -> str:
    """Return the reference as "repo:tag", the form stored in ``repo_tags``."""
    repo, tag = parse_reference(ref)
    return f"{repo}:{tag}"


def find_image(records: Iterable[ImageRecord], name: str) -> ImageRecord:
    """Look up an image by full id, by tag, or by a unique id prefix, in that order.

    Raises NotFound naming the reference, or InvalidRequest for an ambiguous id
    prefix or a name that is neither a reference nor an id prefix.
    """
    records = tuple(records)
    for record in records:
        if record.id == name:
            return record

    prefix_match = ID_PREFIX_PATTERN.fullmatch(name)
    try:
        tag = normalize_reference(name)
    except InvalidRequest:
        if prefix_match is None:
            raise
        tag = None
    if tag is not None:
        for record in records:
            if tag in record.repo_tags:
                return record

    if prefix_match is not None:
        matches = [
            record for record in records if record.hex.startswith(prefix_match.group(1))
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidRequest(
                f"image id prefix {name!r} is ambiguous: it matches "
                f"{len(matches)} images. Give more digits of the id."
            )
    raise NotFound(
        f"image {name!r} not found. "
        "Run `docker images` to list the images this daemon has."
    )


# --- `docker import --change` ------------------------------------------------------


def _parse_command(change: str, argument: str) -> tuple[str, ...]:
    """Parse the exec form ``["sh", "-c", "x"]`` or the shell form ``sh -c x``."""
    if not argument.startswith("["):
        return ("/bin/sh", "-c", argument)
    try:
        words = json.loads(argument)
    except json.JSONDecodeError:
        words = None
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise InvalidRequest(
            f"invalid change {change!r}: the exec form must be a JSON array "
            'of strings, like ["sh", "-c", "date"].'
        )
    return tuple(words)


def _set_env(env: tuple[str, ...], key: str, value: str) -> tuple[str, ...]:
    entries = [entry for entry in env if entry.partition("=")[0] != key]
    return (*entries, f"{key}={value}")


def _apply_env(env: tuple[str, ...], change: str, argument: str) -> tuple[str, ...]:
    first = argument.split(None, 1)[0]
    if "=" not in first:
        # The legacy form "ENV KEY value with spaces" sets one variable.
        key, _, value = argument.partition(" ")
        return _set_env(env, key, value.strip())
    try:
        words = shlex.split(argument)
    except ValueError as exc:
        raise InvalidRequest(
            f"invalid change {change!r}: {exc}. Quote each value as a shell would."
        ) from exc
    for word in words:
        key, equals, value = word.partition("=")
        if not key or not equals:
            raise InvalidRequest(
                f"invalid change {change!r}: {word!r} is not of the form KEY=value."
            )
        env = _set_env(env, key, value)
    return env


def apply_changes(record: ImageRecord, changes: Iterable[str]) -> ImageRecord:
    """Apply `docker import --change` instructions to an image record.

    Supports CMD and ENTRYPOINT (exec or shell form), ENV (``KEY=value ...`` or
    ``KEY value``), WORKDIR (relative to the previous one) and USER. Raises
    InvalidRequest naming the change for anything else.
    """
    for change in changes:
        instruction, _, argument = change.strip().partition(" ")
        keyword = instruction.upper()
        argument = argument.strip()
        if keyword not in SUPPORTED_CHANGES:
            raise InvalidRequest(
                f"invalid change {change!r}: Dockyard supports only "
                f"{', '.join(SUPPORTED_CHANGES)} in --change."
            )
        if not argument:
            raise InvalidRequest(
                f"invalid change {change!r}: {keyword} needs an argument."
            )
        if keyword == "CMD":
            record = attrs.evolve(record, cmd=_parse_command(change, argument))
        elif keyword == "ENTRYPOINT":
            record = attrs.evolve(record, entrypoint=_parse_command(change, argument))
        elif keyword == "ENV":
            record = attrs.evolve(record, env=_apply_env(record.env, change, argument))
        elif keyword == "WORKDIR":
            working_dir = posixpath.normpath(
                posixpath.join(record.working_dir or "/", argument)
            )
            record = attrs.evolve(record, working_dir=working_dir)
        else:
            record = attrs.evolve(record, user=argument)
    return record


# --- Tar members -------------------------------------------------------------------


class MemberKind(enum.Enum):
    """Kind of a tar member, from its type flag."""

    FILE = "regular file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    CHARACTER_DEVICE = "character device"
    BLOCK_DEVICE = "block device"
    FIFO = "FIFO"
    OTHER = "unknown member type"


_KIND_BY_TAR_TYPE = {
    **{tar_type: MemberKind.FILE for tar_type in tarfile.REGULAR_TYPES},
    tarfile.DIRTYPE: MemberKind.DIRECTORY,
    tarfile.SYMTYPE: MemberKind.SYMLINK,
    tarfile.LNKTYPE: MemberKind.HARDLINK,
    tarfile.CHRTYPE: MemberKind.CHARACTER_DEVICE,
    tarfile.BLKTYPE: MemberKind.BLOCK_DEVICE,
    tarfile.FIFOTYPE: MemberKind.FIFO,
}

# Limits against decompression bombs, such as 1 MiB of gzip that unpacks to
# 1 GiB of zeros. They are generous bounds, far above typical root
# filesystems, and not typical sizes. MAX_IMAGE_BYTES bounds the sum of the
# member sizes in the tar headers, so it also bounds the regular file content
# that one import writes.
MAX_IMAGE_BYTES = 16 << 30
# The importer keeps every member header in memory while it checks the
# archive. That costs about 0.9 KiB per member (an estimate from tracemalloc on
# CPython 3.11 with 45-character names), so this many members take about 1 GB.
MAX_IMAGE_MEMBERS = 1_000_000
# PAX headers and GNU long names are read into memory whole, so each may have
# at most this many bytes. Go's archive/tar has the same limit
# (maxSpecialFileSize).
MAX_EXTENDED_HEADER_BYTES = 1 << 20
# uid_t and gid_t are 32 bits on Linux, and chown(2) reads 2**32 - 1, which is
# (uid_t) -1, as "leave the owner unchanged".
MAX_OWNER_ID = 2**32 - 2

UNPACKED_KINDS = frozenset(
    {MemberKind.FILE, MemberKind.DIRECTORY, MemberKind.SYMLINK, MemberKind.HARDLINK}
)
ROOT = PurePosixPath(".")


def member_kind(tar_type: bytes) -> MemberKind:
    """Map a tar type flag (``tarfile.TarInfo.type``) to a MemberKind."""
    return _KIND_BY_TAR_TYPE.get(tar_type, MemberKind.OTHER)


PATH_HINT = (
    "Build the tarball from inside the root filesystem, "
    "for example `tar -C rootfs -cf image.tar .`."
)
CONFLICT_HINT = "Remove one of the two conflicting members from the tarball."
OWNER_HINT = (
    "Create the tarball with valid owners, for example "
    "`tar --owner=0 --group=0 -C rootfs -cf image.tar .`."
)
LIMIT_HINT = (
    "Dockyard enforces this fixed limit against decompression bombs, "
    "so import a smaller root filesystem."
)
SPECIAL_FILE_HINT = (
    "Leave device nodes and FIFOs out of the tarball, for example with "
    "`tar --exclude=./dev/*`, because the runtime creates /dev in the container."
)


def _reject(name: str, reason: str, hint: str = PATH_HINT) -> InvalidRequest:
    return InvalidRequest(f"invalid tar member {name!r}: {reason}. {hint}")


def _normalize_member_path(name: str, what: str, member: str) -> PurePosixPath:
    """Drop ``.`` components and apply ``..`` lexically.

    Raises InvalidRequest if the path is empty, absolute or leaves the root.
    """
    if not name:
        raise _reject(member, f"{what} is empty")
    if "\0" in name:
        raise _reject(member, f"{what} contains a NUL byte")
    if name.startswith("/"):
        raise _reject(member, f"{what} {name!r} is an absolute path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise _reject(
                    member, f"{what} {name!r} leaves the image root through '..'"
                )
            parts.pop()
            continue
        parts.append(part)
    return PurePosixPath(*parts) if parts else ROOT


def check_member(name: str, kind: MemberKind, linkname: str | None) -> PurePosixPath:
    """Check one tar member on its own and return its path relative to the image root.

    ``linkname`` is the symlink target or the hard link's archive path, and is
    ignored for other kinds. Returns ``PurePosixPath(".")`` for the root
    directory itself. Raises InvalidRequest naming the member and the reason.
    Rules that span several members are checked by `check_members`.
    """
    if kind not in UNPACKED_KINDS:
        raise _reject(
            name,
            f"it is a {kind.value}, and Dockyard imports regular files, "
            "directories and links only",
            SPECIAL_FILE_HINT,
        )
    path = _normalize_member_path(name, "the name", name)
    if path == ROOT and kind is not MemberKind.DIRECTORY:
        raise _reject(
            name, f"it names the image root but is a {kind.value}, not a directory"
        )
    if kind is MemberKind.SYMLINK and not linkname:
        raise _reject(name, "the symlink has an empty target")
    if kind is MemberKind.SYMLINK and "\0" in (linkname or ""):
        raise _reject(name, "the symlink target contains a NUL byte")
    if kind is MemberKind.HARDLINK:
        target = _normalize_member_path(linkname or "", "the hard link target", name)
        if target == ROOT:
            raise _reject(name, "the hard link points at the image root")
    return path


def check_member_owner(name: str, uid: int, gid: int) -> None:
    """Raise InvalidRequest naming the member if its uid or gid is out of range.

    The valid range is 0 to MAX_OWNER_ID. The check applies even when the
    importer does not change owners, because such a header is invalid anyway.
    """
    for field, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= MAX_OWNER_ID:
            raise _reject(
                name,
                f"its {field} {value} is outside the valid range 0 to {MAX_OWNER_ID}",
                OWNER_HINT,
            )


def check_archive_totals(members: int, size: int) -> None:
    """Raise InvalidRequest if an archive is past MAX_IMAGE_MEMBERS or MAX_IMAGE_BYTES.

    ``members`` and ``size`` are running totals over the member headers read
    so far, with ``size`` in bytes. Calling this after each header stops the
    importer before it decompresses the data of a member past the limit.
    """
    if members > MAX_IMAGE_MEMBERS:
        raise InvalidRequest(
            f"invalid image archive: it has more than {MAX_IMAGE_MEMBERS:,} "
            f"members, the maximum for one image. {LIMIT_HINT}"
        )
    if size > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"invalid image archive: the sizes of its members add up to at "
            f"least {size:,} bytes, more than {MAX_IMAGE_BYTES:,} bytes, the "
            f"maximum unpacked size of one image. {LIMIT_HINT}"
        )


def check_extended_header(offset: int, size: int) -> None:
    """Raise InvalidRequest if a PAX or GNU extended header is too large to read.

    ``offset`` is the byte offset of the header in the uncompressed archive,
    and ``size`` is the length of its content in bytes.
    """
    if size > MAX_EXTENDED_HEADER_BYTES:
        raise InvalidRequest(
            f"invalid image archive: the PAX or GNU extended header at byte "
            f"offset {offset} has {size:,} bytes, more than the maximum of "
            f"{MAX_EXTENDED_HEADER_BYTES:,}. {LIMIT_HINT}"
        )


@attrs.frozen
class CheckedMember:
    """A tar member that passed the checks, with paths relative to the image root."""

    path: PurePosixPath
    kind: MemberKind
    hardlink_target: PurePosixPath | None = None  # set for hard links only


def check_members(
    members: Iterable[tuple[str, MemberKind, str | None]],
) -> tuple[CheckedMember, ...]:
    """Check every member of an archive, in archive order, before anything is written.

    Each member is ``(name, kind, linkname)``. Returns one CheckedMember per
    member, in the same order. On top of `check_member`, this rejects a member
    whose ancestor is an earlier symlink or file, a member that replaces a
    directory, and a hard link whose target is not an earlier regular file.
    """
    kinds: dict[PurePosixPath, MemberKind] = {ROOT: MemberKind.DIRECTORY}
    checked: list[CheckedMember] = []
    for name, kind, linkname in members:
        path = check_member(name, kind, linkname)
        for ancestor in reversed(path.parents[:-1]):
            ancestor_kind = kinds.setdefault(ancestor, MemberKind.DIRECTORY)
            if ancestor_kind is not MemberKind.DIRECTORY:
                raise _reject(
                    name,
                    f"its parent {str(ancestor)!r} is a {ancestor_kind.value} "
                    "earlier in the archive, and Dockyard never writes through "
                    "a link or into a file",
                    CONFLICT_HINT,
                )

        previous = kinds.get(path)
        if previous is MemberKind.DIRECTORY and kind is not MemberKind.DIRECTORY:
            raise _reject(
                name,
                f"it would replace the directory {str(path)!r} with a {kind.value}",
                CONFLICT_HINT,
            )

        target = None
        if kind is MemberKind.HARDLINK:
            target = _normalize_member_path(
                linkname or "", "the hard link target", name
            )
            if target == path:
                raise _reject(name, "the hard link points at itself")
            if kinds.get(target) is not MemberKind.FILE:
                raise _reject(
                    name,
                    f"the hard link target {linkname!r} is not an earlier "
                    "regular file of the archive",
                )

        # A hard link is a regular file from here on.
        kinds[path] = MemberKind.FILE if kind is MemberKind.HARDLINK else kind
        checked.append(CheckedMember(path, kind, target))
    return tuple(checked)
