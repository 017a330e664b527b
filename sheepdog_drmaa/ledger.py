"""Endings of attempts, in one order for all of them: stored, then applied, then announced.

Whoever decided an ending (a worker's report, the scheduler's word, a timeout, a cancel), it is
committed to the store first; only then does its task change state in memory, and only then is it
told (the completions stream, the log). A store that refuses the write leaves every task's state
as the store has it, and nothing is shown that the store does not hold. (What the state knows of
workers, which are gone and which are to be removed, changes as it decides: no task depends on it.)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .model import AttemptEnd, Cause, Closing, TaskState
from .state import SweepState
from .store import Store

log = logging.getLogger(__name__)


class Ledger:
    """Stores, applies and announces the ended attempts of one sweep."""

    def __init__(self, store: Store, sweep_id: str, state: SweepState, completed: Callable[[int], None]) -> None:
        self.store, self.sweep_id, self.state, self.completed = store, sweep_id, state, completed

    def commit(self, closings: Sequence[Closing], worker_ended: str | None = None) -> None:
        """Store the endings in one transaction (with their worker's ending, when that is what ended
        them), then apply them to the state, then announce them."""
        self.store.record_ends(self.sweep_id, [
            AttemptEnd(c.attempt.task, c.attempt.number, c.cause.value, c.ended, c.detail.to_json(), c.outcome.value,
                       c.result, c.error, dict(c.output)) for c in closings], worker_ended=worker_ended)
        self.state.apply(closings)
        for closing in closings:
            self._announce(closing)

    def _announce(self, closing: Closing) -> None:
        """A task ended for good joins the completions; a failure is logged."""
        attempt, outcome = closing.attempt, closing.outcome
        if outcome in (TaskState.DONE, TaskState.FAILED):
            self.completed(attempt.task)
        if closing.cause not in (Cause.RESULT, Cause.RETURNED, Cause.CANCELLED):
            log.log(logging.INFO if outcome == TaskState.PENDING else logging.WARNING,
                    "task %d attempt %d: %s (%s); task is now %s", attempt.task, attempt.number,
                    closing.cause.value, closing.detail.summary or "", outcome.value)
