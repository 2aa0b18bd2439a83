"""Docker's multiplexed stream format for container output without a TTY.

Each frame is an 8-byte header (stream id, three zero bytes, payload size
as a big-endian 32-bit integer) followed by the payload. Dockyard stores
container logs in this format, so `docker logs` serves the file as it is.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

STDIN = 0
STDOUT = 1
STDERR = 2

_HEADER = struct.Struct(">BxxxI")
HEADER_SIZE = _HEADER.size


def encode_frame(stream: int, payload: bytes) -> bytes:
    return _HEADER.pack(stream, len(payload)) + payload


def decode_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (stream, payload) for each whole frame; a cut-off tail is ignored."""
    offset = 0
    while offset + HEADER_SIZE <= len(data):
        stream, size = _HEADER.unpack_from(data, offset)
        start = offset + HEADER_SIZE
        if start + size > len(data):
            return
        yield stream, data[start : start + size]
        offset = start + size
