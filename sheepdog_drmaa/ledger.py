"""Endings of attempts, in one order: stored first, then announced (completions stream, log).

A result is never shown to the user, nor its task counted done, before it is committed: a
client that dies between the two loses nothing that it said it had.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from .model import Attempt, AttemptEnd, Cause, TaskState
from .state import SweepState
from .store import Store

log = logging.getLogger(__name__)


class Ledger:
    """Stores ended attempts of one sweep and tells whoever streams its results."""

    def __init__(self, store: Store, sweep_id: str, state: SweepState, completed: Callable[[int], None]) -> None:
        self.store, self.sweep_id, self.state, self.completed = store, sweep_id, state, completed

    def persist(self, attempts: list[Attempt], worker_ended: str | None = None) -> None:
        """Store attempts the state has already ended (by the scheduler's word or our own decision),
        in one transaction with their worker's ending when that is what ended them; then announce them."""
        ends = []
        for attempt in attempts:
            assert attempt.cause is not None and attempt.ended is not None
            ends.append(AttemptEnd(attempt.task, attempt.number, attempt.cause.value, attempt.ended, attempt.detail,
                                   self.state.tasks.states[attempt.task].value))
        self.store.record_ends(self.sweep_id, ends, worker_ended=worker_ended)
        for attempt in attempts:
            self.announce(attempt)

    def announce(self, attempt: Attempt) -> None:
        """A stored ending, told: a task ended for good joins the completions; a failure is logged."""
        assert attempt.cause is not None
        task_state = self.state.tasks.states[attempt.task]
        if task_state in (TaskState.DONE, TaskState.FAILED):
            self.completed(attempt.task)
        if attempt.cause not in (Cause.RESULT, Cause.RETURNED, Cause.CANCELLED):
            log.log(logging.INFO if task_state == TaskState.PENDING else logging.WARNING,
                    "task %d attempt %d: %s (%s); task is now %s", attempt.task, attempt.number,
                    attempt.cause.value, attempt.detail.get("summary", ""), task_state.value)
