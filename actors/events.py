"""The event bus: fans daemon events out to `docker events` subscribers.

Publishing never blocks. Each subscriber has a bounded buffer; when a
subscriber falls that far behind, newer events for it are dropped and the
drop is logged, so a stalled client cannot stall the daemon or grow its
memory without bound.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping

import trio

from messages.events import Event

logger = logging.getLogger(__name__)

# Events buffered for one subscriber before newer ones are dropped; a
# reload storm or a burst of container starts fits well within it.
SUBSCRIBER_BUFFER = 1024


class EventBus:
    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._subscribers: set[trio.MemorySendChannel[Event]] = set()
        self._dropped = 0

    def emit(
        self, type: str, action: str, actor_id: str, attributes: Mapping[str, str]
    ) -> Event:
        event = Event(type, action, actor_id, attributes, self._clock())
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._dropped += 1
                logger.warning(
                    "dropped %s %s event for a slow subscriber (%d dropped so far)",
                    type,
                    action,
                    self._dropped,
                )
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)
        return event

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """Open a channel that receives every event emitted while it is open."""
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
