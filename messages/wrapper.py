"""Wrapper scripts for runtimes configured with `runtimeArgs`.

A wrapper execs the runtime with its configured arguments and passes the
daemon's own arguments on. Every configured word is shell-quoted, so a path
or an argument with spaces or shell metacharacters is passed as one word
and runs nothing else. The file name carries the SHA-256 digest of the
content: the same content is always the same file, so a wrapper never has
to be rewritten, and a container can keep its wrapper for as long as it
exists.
"""

from __future__ import annotations

import hashlib
import shlex

WRAPPER_DIRECTORY = "runtimes"
WRAPPER_MODE = 0o700


def wrapper_script(path: str, args: tuple[str, ...]) -> bytes:
    """Return the script that runs `path args...` followed by the daemon's arguments."""
    words = " ".join(shlex.quote(word) for word in (path, *args))
    return f'#!/bin/sh\nexec {words} "$@"\n'.encode()


def content_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def wrapper_file_name(runtime_name: str, content: bytes) -> str:
    """Return `<runtime-name>.<sha256 of content>`, the wrapper's file name."""
    return f"{runtime_name}.{content_digest(content)}"


def parse_wrapper_file_name(file_name: str) -> tuple[str, str] | None:
    """Split a wrapper file name into runtime name and digest; None if it is not one."""
    name, dot, digest = file_name.rpartition(".")
    is_digest = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    if not dot or not name or not is_digest:
        return None
    return name, digest
