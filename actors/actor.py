"""A serial actor: one trio task that runs the operations sent to it, one at a time.

A caller's operation runs in the actor's task, not the caller's. If the
caller is cancelled while waiting, the operation still runs to its end,
so a lifecycle step is never left half-done; the caller just stops
waiting for its result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Operations that may queue for one actor; senders wait beyond this.
MAILBOX_SIZE = 64


class _Request:
    def __init__(self, operation: Callable[[], Awaitable[Any]]) -> None:
        self.operation = operation
        self.result: outcome.Outcome[Any] | None = None
        self.done = trio.Event()


class SerialActor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[_Request](MAILBOX_SIZE)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` in the actor's task after those sent before it."""
        request = _Request(operation)
        try:
            await self._send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.ClosedResourceError(f"actor {self.name} has stopped") from None
        await request.done.wait()
        assert request.result is not None
        result: T = request.result.unwrap()
        return result

    def close(self) -> None:
        """Accept no more operations; the actor ends once it has run those queued."""
        self._send.close()

    async def run(self) -> None:
        try:
            async for request in self._receive:
                try:
                    request.result = outcome.Value(await request.operation())
                except Exception as error:
                    request.result = outcome.Error(error)
                except BaseException:
                    # The actor itself is being cancelled: the caller gets a
                    # plain error, and the cancellation stays in this task.
                    request.result = outcome.Error(self._stopped())
                    raise
                finally:
                    request.done.set()
        finally:
            self._fail_queued()

    def _fail_queued(self) -> None:
        """Fail the operations still queued when the actor's task ends.

        A cancelled actor leaves them behind, and their callers, which may
        be shielded, would otherwise wait forever.
        """
        while True:
            try:
                request = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            request.result = outcome.Error(self._stopped())
            request.done.set()
        # Later calls fail at once: a send to a closed channel raises.
        self._receive.close()

    def _stopped(self) -> trio.ClosedResourceError:
        return trio.ClosedResourceError(f"actor {self.name} stopped")
