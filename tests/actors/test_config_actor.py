"""The config actor: plain reads, and subscribers that end on the newest snapshot."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.config_actor import ConfigActor
from messages.config import DaemonConfig
from messages.snapshot import Snapshot


def _snapshot(generation: int) -> Snapshot:
    return Snapshot(generation=generation, config=DaemonConfig(), runtimes={})


def test_current_returns_published_snapshot() -> None:
    actor = ConfigActor(_snapshot(1))
    second = _snapshot(2)
    actor.publish(second)
    assert actor.current() is second


def test_publish_rejects_older_generation() -> None:
    actor = ConfigActor(_snapshot(3))
    with pytest.raises(ValueError, match="not newer"):
        actor.publish(_snapshot(3))


async def test_slow_subscriber_gets_latest_and_never_blocks_publish() -> None:
    actor = ConfigActor(_snapshot(1))
    seen: list[int] = []
    subscription = actor.subscribe()
    seen.append((await subscription.__anext__()).generation)
    # A thousand publishes while the subscriber reads nothing: none blocks.
    for generation in range(2, 1002):
        actor.publish(_snapshot(generation))
    seen.append((await subscription.__anext__()).generation)
    await subscription.aclose()
    assert seen == [1, 1001]


async def test_subscriber_sees_each_publish_it_waits_for() -> None:
    actor = ConfigActor(_snapshot(1))
    seen: list[int] = []

    async def consume() -> None:
        async for snapshot in actor.subscribe():
            seen.append(snapshot.generation)
            if snapshot.generation == 3:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        actor.publish(_snapshot(2))
        await trio.testing.wait_all_tasks_blocked()
        actor.publish(_snapshot(3))
    assert seen == [1, 2, 3]


async def test_closed_subscription_is_forgotten() -> None:
    actor = ConfigActor(_snapshot(1))
    subscription = actor.subscribe()
    await subscription.__anext__()
    await subscription.aclose()
    actor.publish(_snapshot(2))
    assert actor._subscribers == set()
