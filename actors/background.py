"""Work that an operation leaves running after it returns.

A container's record writes, its unmount after an exit and the deletion of
its files after a removal run in the daemon's nursery while the operations
go on. `Background` counts them, so that a caller can wait until all of
them have finished: a shutdown, a test, or an embedder about to copy the
data root.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


class Background:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()

    def start_soon(self, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work` in the nursery and count it until it ends."""
        if self._running == 0:
            self._idle = trio.Event()
        self._running += 1

        async def run() -> None:
            try:
                await work()
            finally:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

        self._nursery.start_soon(run)

    async def wait_idle(self) -> None:
        """Wait until no counted work runs, including work started meanwhile."""
        while self._running:
            await self._idle.wait()
