"""Shared test helpers: the check for real components, and small images."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterator

import pytest

REAL_REQUIREMENTS_HINT = (
    "run as root after `make setup` (installs runc, busybox-static); the "
    "docker CLI is not installed by it, and the tests use the `docker` on PATH"
)


def require_real(*, runc: bool = True, docker_cli: bool = False) -> None:
    """Skip a test that needs real components which are missing; fail under CI=true.

    CI must never pass by skipping the tests that exercise real runc,
    overlayfs and the docker CLI, so there a missing part is a failure.
    """
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if runc and shutil.which("runc") is None:
        missing.append("runc")
    if runc and not os.path.exists("/usr/bin/busybox"):
        missing.append("/usr/bin/busybox")
    if docker_cli and shutil.which("docker") is None:
        missing.append("the docker CLI")
    if not missing:
        return
    reason = f"needs {', '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, which CI=true requires: {REAL_REQUIREMENTS_HINT}")
    pytest.skip(reason)


PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:app\n"


def tiny_image_tar() -> bytes:
    """A root filesystem with account files only: enough for a fake runtime."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("etc", "bin"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, content in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
