"""Reload transactions: each kind of step runs only on its own end."""

from __future__ import annotations

import pytest

from actors.transaction import Transaction, TransactionEnded


def _recorder(log: list[str], name: str):  # type: ignore[no-untyped-def]
    async def step() -> None:
        log.append(name)

    return step


async def test_commit_runs_commit_steps_in_order() -> None:
    log: list[str] = []
    transaction = Transaction("t")
    transaction.on_commit(_recorder(log, "commit 1"))
    transaction.on_rollback(_recorder(log, "rollback 1"))
    transaction.on_commit(_recorder(log, "commit 2"))
    transaction.on_rollback(_recorder(log, "rollback 2"))
    await transaction.commit()
    assert log == ["commit 1", "commit 2"]


async def test_rollback_runs_rollback_steps_newest_first() -> None:
    log: list[str] = []
    transaction = Transaction("t")
    transaction.on_commit(_recorder(log, "commit 1"))
    transaction.on_rollback(_recorder(log, "rollback 1"))
    transaction.on_commit(_recorder(log, "commit 2"))
    transaction.on_rollback(_recorder(log, "rollback 2"))
    await transaction.rollback()
    assert log == ["rollback 2", "rollback 1"]


async def test_failed_rollback_step_does_not_stop_the_others() -> None:
    log: list[str] = []

    async def broken() -> None:
        raise OSError("disk gone")

    transaction = Transaction("t")
    transaction.on_rollback(_recorder(log, "first"))
    transaction.on_rollback(broken)
    transaction.on_rollback(_recorder(log, "last"))
    await transaction.rollback()
    assert log == ["last", "first"]


async def test_transaction_ends_once() -> None:
    transaction = Transaction("t")
    await transaction.commit()
    with pytest.raises(TransactionEnded):
        await transaction.rollback()
    with pytest.raises(TransactionEnded):
        transaction.on_commit(_recorder([], "late"))
    with pytest.raises(TransactionEnded):
        transaction.on_rollback(_recorder([], "late"))
