"""Container output, pumped from the runtime's pipes to the log and to attached clients.

The log file contains Docker's multiplexed frames, so `docker logs` without a
TTY serves it as it is. An attached client receives frames from the moment
it attaches until the end of the container's current run, or of its next
run when it attaches to a container that is not running (as `docker run`
does, attaching before it starts the container).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import trio

from messages.stream import encode_frame

logger = logging.getLogger(__name__)

# Bytes read from a pipe at once.
READ_SIZE = 65536
# Frames buffered for an attached client. When a client falls this far
# behind, the container's output waits for it, as with dockerd's attach.
ATTACH_BUFFER = 256


class OutputHub:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._clients: set[trio.MemorySendChannel[bytes]] = set()

    @contextlib.contextmanager
    def attach(self) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """Open a channel of frames; it closes when the run it belongs to ends."""
        send, receive = trio.open_memory_channel[bytes](ATTACH_BUFFER)
        self._clients.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._clients.discard(send)
            send.close()

    def end_attachments(self) -> None:
        """Close every attached client's channel, for a start that failed."""
        for client in list(self._clients):
            client.close()
        self._clients.clear()

    async def pump(self, streams: dict[int, int]) -> None:
        """Copy each pipe (stream id to read fd) to the log and clients until EOF.

        Takes ownership of the descriptors. Closes the attached clients'
        channels when every pipe has ended: the run's output is complete.
        """
        clients = set(self._clients)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            async with trio.open_nursery() as nursery:
                for stream, fd in streams.items():
                    nursery.start_soon(self._copy, stream, fd, log_fd, clients)
        finally:
            os.close(log_fd)
            for client in clients | self._clients:
                self._clients.discard(client)
                client.close()

    async def _copy(
        self,
        stream: int,
        fd: int,
        log_fd: int,
        clients: set[trio.MemorySendChannel[bytes]],
    ) -> None:
        async with trio.lowlevel.FdStream(fd) as pipe:
            while chunk := await pipe.receive_some(READ_SIZE):
                frame = encode_frame(stream, chunk)
                # NOTE: a blocking write; log frames are small and land in
                # the page cache, so it is far cheaper than a thread hop.
                os.write(log_fd, frame)
                clients.update(self._clients)
                for client in list(clients):
                    try:
                        await client.send(frame)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        clients.discard(client)


async def read_log(log_path: Path) -> bytes:
    """Return the whole log file, or nothing when the container never ran."""
    try:
        return await trio.Path(log_path).read_bytes()
    except FileNotFoundError:
        return b""
