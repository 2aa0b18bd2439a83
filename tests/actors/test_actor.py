"""The serial actor: what its callers see when its task ends."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.actor import SerialActor


async def test_queued_calls_fail_when_actor_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = SerialActor("test")
    outcomes: list[str] = []

    async def queued() -> None:
        # Shielded, as the daemon's shutdown calls are, so a call that is
        # never completed would hang here.
        with trio.CancelScope(shield=True):
            try:
                await actor.call(trio.lowlevel.checkpoint)
            except trio.ClosedResourceError:
                outcomes.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        # The first operation keeps the actor busy until the nursery is cancelled.
        nursery.start_soon(actor.call, trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queued)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    assert outcomes == ["closed"]
    with pytest.raises(trio.ClosedResourceError):
        await actor.call(trio.lowlevel.checkpoint)
