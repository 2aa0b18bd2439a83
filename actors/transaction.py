"""A reload transaction: steps to run if it commits, and steps to undo if not.

One mechanism for both lists. Commit steps run in registration order, and
only on commit. Rollback steps run in reverse registration order, and only
on rollback. Each list runs at most once, and a transaction ends exactly
one way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]


class TransactionEnded(RuntimeError):
    """A step was registered, or an end requested, after the transaction ended."""


class Transaction:
    def __init__(self, name: str) -> None:
        self.name = name
        self._commit_steps: list[Step] = []
        self._rollback_steps: list[Step] = []
        self._ended = False

    def on_commit(self, step: Step) -> None:
        self._check_open()
        self._commit_steps.append(step)

    def on_rollback(self, step: Step) -> None:
        self._check_open()
        self._rollback_steps.append(step)

    async def commit(self) -> None:
        """Run the commit steps; an error in one propagates after the step."""
        self._end()
        for step in self._commit_steps:
            await step()

    async def rollback(self) -> None:
        """Run every rollback step, newest first; log and continue past failures."""
        self._end()
        for step in reversed(self._rollback_steps):
            try:
                await step()
            except Exception:
                logger.exception("rollback step of %s failed", self.name)

    def _check_open(self) -> None:
        if self._ended:
            raise TransactionEnded(f"transaction {self.name} has already ended")

    def _end(self) -> None:
        self._check_open()
        self._ended = True
