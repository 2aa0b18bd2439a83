"""Resolve docker's `--user` value against a container's /etc/passwd and /etc/group.

The rules follow runc 1.1's user lookup, which dockerd uses:

- An empty value means root (uid 0, gid 0).
- A numeric user part matches the first entry with that uid, any other the
  first entry with that name. A numeric uid with no entry is allowed and gets
  gid 0 unless a group is given. A name with no entry is an error.
- The group part matches a group the same way, by gid or by name. A numeric
  gid with no entry is allowed. A name with no entry is an error.
- Supplementary groups are the groups whose member list contains the user's
  name. As in runc, they are computed only when no group is given, because
  an explicit group replaces the user's group memberships.

The parsers never raise. They skip blank lines, comments and malformed lines,
because an image may ship any content in these files.
"""

from __future__ import annotations

import attrs

from messages.errors import InvalidRequest

# runc uses / as HOME for a user that has no passwd entry.
DEFAULT_HOME = "/"

# Largest uid or gid runc accepts (a signed 32-bit integer).
MAX_ID = 2**31 - 1


@attrs.frozen(kw_only=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@attrs.frozen(kw_only=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ResolvedUser:
    """The numeric identity a container process runs with."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = DEFAULT_HOME


def _is_numeric(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def _parse_id(text: str) -> int | None:
    if not _is_numeric(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _data_lines(text: str) -> list[list[str]]:
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(stripped.split(":"))
    return lines


def parse_passwd(text: str) -> tuple[PasswdEntry, ...]:
    """Parse /etc/passwd lines (`name:password:uid:gid:gecos:home:shell`)."""
    entries = []
    for fields in _data_lines(text):
        if len(fields) < 4:
            continue
        uid = _parse_id(fields[2])
        gid = _parse_id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else DEFAULT_HOME
        entries.append(PasswdEntry(name=fields[0], uid=uid, gid=gid, home=home))
    return tuple(entries)


def parse_group(text: str) -> tuple[GroupEntry, ...]:
    """Parse /etc/group lines (`name:password:gid:member,member`)."""
    entries = []
    for fields in _data_lines(text):
        if len(fields) < 3:
            continue
        gid = _parse_id(fields[2])
        if gid is None:
            continue
        member_field = fields[3] if len(fields) > 3 else ""
        members = tuple(name for name in member_field.split(",") if name)
        entries.append(GroupEntry(name=fields[0], gid=gid, members=members))
    return tuple(entries)


def _split_spec(spec: str) -> tuple[str, str | None]:
    user, colon, group = spec.partition(":")
    if not colon:
        return user, None
    if not user or not group or ":" in group:
        raise InvalidRequest(
            f"invalid user {spec!r}: expected user or user:group, where each part "
            "is a name or a numeric id"
        )
    return user, group


def _check_numeric(part: str, kind: str, spec: str) -> None:
    if _is_numeric(part) and _parse_id(part) is None:
        raise InvalidRequest(
            f"invalid user {spec!r}: {kind} {part} is out of range. "
            f"Use a value from 0 to {MAX_ID}."
        )


def _find_user(name_or_uid: str, passwd_text: str | None) -> PasswdEntry | None:
    uid = _parse_id(name_or_uid)
    for entry in parse_passwd(passwd_text or ""):
        if uid is not None and entry.uid == uid:
            return entry
        if uid is None and entry.name == name_or_uid:
            return entry
    return None


def _find_group(name_or_gid: str, group_text: str | None) -> GroupEntry | None:
    gid = _parse_id(name_or_gid)
    for entry in parse_group(group_text or ""):
        if gid is not None and entry.gid == gid:
            return entry
        if gid is None and entry.name == name_or_gid:
            return entry
    return None


def _not_found(kind: str, name: str, path: str, text: str | None) -> InvalidRequest:
    id_name = "uid" if kind == "user" else "gid"
    if text is None:
        return InvalidRequest(
            f"{kind} {name!r} not found: the container has no {path}. "
            f"Use a numeric {id_name} or add {path} to the image."
        )
    return InvalidRequest(
        f"{kind} {name!r} not found in the container's {path}. "
        f"Add the {kind} to the image or use a numeric {id_name}."
    )


def _supplementary_gids(user_name: str, group_text: str | None) -> tuple[int, ...]:
    gids = []
    for entry in parse_group(group_text or ""):
        if user_name in entry.members and entry.gid not in gids:
            gids.append(entry.gid)
    return tuple(gids)


def resolve_user(
    spec: str, passwd_text: str | None, group_text: str | None
) -> ResolvedUser:
    """Resolve a `--user` value ("", "name", "uid", "name:group", "uid:gid", ...).

    `passwd_text` and `group_text` are the contents of the container's
    /etc/passwd and /etc/group, or None when the file does not exist.
    Raises InvalidRequest for a malformed value, an id out of range, or a
    name that neither file contains.
    """
    user_part, group_part = _split_spec(spec or "0")
    _check_numeric(user_part, "user", spec)
    if group_part is not None:
        _check_numeric(group_part, "group", spec)

    entry = _find_user(user_part, passwd_text)
    if entry is None and not _is_numeric(user_part):
        raise _not_found("user", user_part, "/etc/passwd", passwd_text)
    uid = entry.uid if entry is not None else int(user_part)
    home = entry.home if entry is not None else DEFAULT_HOME

    if group_part is not None:
        group = _find_group(group_part, group_text)
        if group is None and not _is_numeric(group_part):
            raise _not_found("group", group_part, "/etc/group", group_text)
        gid = group.gid if group is not None else int(group_part)
        return ResolvedUser(uid=uid, gid=gid, home=home)

    if entry is None:
        return ResolvedUser(uid=uid, gid=0, home=home)
    additional_gids = _supplementary_gids(entry.name, group_text)
    return ResolvedUser(
        uid=uid, gid=entry.gid, additional_gids=additional_gids, home=home
    )
