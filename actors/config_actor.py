"""The config actor: it owns the current snapshot.

`current()` is the read side of read-copy-update: a plain synchronous read
that returns the published snapshot, which is never changed afterwards.
`publish` is the only way to replace it, and only the reload actor calls
it. Subscribers get the newest snapshot. A subscriber that is slow to read
skips intermediate snapshots instead of queueing them, so it can neither
block a publish nor make memory grow.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import trio

from messages.snapshot import Snapshot

logger = logging.getLogger(__name__)


class _Subscriber:
    def __init__(self, latest: Snapshot) -> None:
        self.latest = latest
        self.changed = trio.Event()


class ConfigActor:
    def __init__(self, initial: Snapshot) -> None:
        self._current = initial
        self._subscribers: set[_Subscriber] = set()

    def current(self) -> Snapshot:
        return self._current

    def publish(self, snapshot: Snapshot) -> None:
        if snapshot.generation <= self._current.generation:
            raise ValueError(
                f"generation {snapshot.generation} is not newer than "
                f"{self._current.generation}"
            )
        self._current = snapshot
        for subscriber in self._subscribers:
            subscriber.latest = snapshot
            subscriber.changed.set()
        logger.debug("published snapshot generation %d", snapshot.generation)

    async def subscribe(self) -> AsyncIterator[Snapshot]:
        """Yield the current snapshot, then each newer one as it is published.

        Snapshots published while the consumer is busy are skipped; the
        newest one is always delivered.
        """
        subscriber = _Subscriber(self._current)
        self._subscribers.add(subscriber)
        try:
            delivered = subscriber.latest
            yield delivered
            while True:
                await subscriber.changed.wait()
                subscriber.changed = trio.Event()
                if subscriber.latest is not delivered:
                    delivered = subscriber.latest
                    yield delivered
        finally:
            self._subscribers.discard(subscriber)
