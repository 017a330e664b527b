"""Every task's state, its attempts and what is pending. Pure.

Tasks are kept in arrays, not as an object each, so that a million-task sweep stays small.
Pending tasks are those never tried, in order, then (served first) those to be tried again.
Tasks may be added while the sweep runs; they join the end of the pending queue.
"""
from __future__ import annotations

import array
import collections
from collections.abc import Iterable, Mapping

from ..failures import is_retryable
from ..model import Attempt, AttemptDetail, Cause, Closing, TaskState, counts_by_name


class TaskLedger:
    """The state of each task, the attempts in workers' hands, and the retry budget spent."""

    def __init__(self, n_tasks: int, *, retries: int, retry_exceptions: tuple[str, ...],
                 done: Iterable[int] = (), attempts_made: Mapping[int, int] | None = None) -> None:
        self.retries = retries
        self.retry_exceptions = retry_exceptions
        self.states: list[TaskState] = [TaskState.PENDING] * n_tasks
        for index in done:
            self.states[index] = TaskState.DONE
        self._fresh = array.array("q", (i for i, s in enumerate(self.states) if s is TaskState.PENDING))
        self._fresh_next = 0
        self._returned: collections.deque[int] = collections.deque()
        # Attempts are numbered on from those an earlier client made, so none is recorded twice.
        self.attempt_numbers = array.array("l", bytes(n_tasks * array.array("l").itemsize))
        for index, made in (attempts_made or {}).items():
            self.attempt_numbers[index] = made
        self.failure_counts: dict[int, int] = {}
        self.failed_attempts: dict[int, list[Attempt]] = {}
        self.running: dict[int, Attempt] = {}   # task -> its attempt in a worker's hands
        self.suspects: set[int] = set()  # tasks held by a worker that died not saying which it ran
        self.walltime_retried: set[int] = set()  # tasks already retried once, uncounted, after a walltime end
        self.n_done = sum(1 for s in self.states if s is TaskState.DONE)
        self.n_failed = 0
        self.n_withdrawn = 0  # pending tasks taken back before they ran (cancelled futures)
        self._withdrawn_queued = 0  # of those, still in the queue (skipped when reached)

    @property
    def n_tasks(self) -> int:
        return len(self.states)

    @property
    def n_pending(self) -> int:
        return len(self._fresh) - self._fresh_next + len(self._returned) - self._withdrawn_queued

    @property
    def finished(self) -> bool:
        return self.n_done + self.n_failed + self.n_withdrawn == self.n_tasks

    def counts(self) -> dict[str, int]:
        return counts_by_name({TaskState.DONE.value: self.n_done, TaskState.FAILED.value: self.n_failed,
                               TaskState.RUNNING.value: len(self.running), TaskState.PENDING.value: self.n_pending})

    def add_tasks(self, n_tasks: int) -> range:
        """Add ``n_tasks`` pending tasks to a live sweep; returns their indices."""
        first = self.n_tasks
        added = range(first, first + n_tasks)
        self.states.extend([TaskState.PENDING] * n_tasks)
        self._fresh.extend(added)
        self.attempt_numbers.extend([0] * n_tasks)
        return added

    def take_pending(self) -> int:
        """The next pending task (there must be one), those to try again first."""
        while True:
            if self._returned:
                task = self._returned.popleft()
            else:
                task = self._fresh[self._fresh_next]
                self._fresh_next += 1
            if self.states[task] is TaskState.PENDING:
                return task
            self._withdrawn_queued -= 1  # withdrawn while it waited

    def withdraw(self, task: int) -> bool:
        """Take back a pending task before it runs; False if it is not pending (running, or ended)."""
        if not 0 <= task < self.n_tasks or self.states[task] is not TaskState.PENDING:
            return False
        self.states[task] = TaskState.CANCELLED
        self.n_withdrawn += 1
        self._withdrawn_queued += 1
        return True

    def put_back(self, task: int) -> None:
        """A task taken but not leased after all goes back to the head of the queue."""
        self._returned.appendleft(task)

    def open_attempt(self, task: int, worker: str, host: str | None, now: float) -> Attempt:
        number = self.attempt_numbers[task] + 1
        self.attempt_numbers[task] = number
        attempt = Attempt(task=task, number=number, worker=worker, started=now, host=host)
        self.states[task] = TaskState.RUNNING
        self.running[task] = attempt
        return attempt

    def outcome(self, attempt: Attempt, cause: Cause, detail: AttemptDetail) -> TaskState:
        """What the attempt's task becomes if the attempt ends so; changes nothing (the ledger stores
        that first, and the attempt is closed only once it is stored)."""
        if cause is Cause.RESULT:
            return TaskState.DONE
        if cause is Cause.RETURNED:
            return TaskState.PENDING
        if cause is Cause.WALLTIME:
            return TaskState.PENDING if detail.fits_fresh_worker else TaskState.FAILED
        retryable = is_retryable(cause, detail.exception_types or (), self.retry_exceptions)
        if retryable and self.failure_counts.get(attempt.task, 0) + 1 <= self.retries:
            return TaskState.PENDING
        return TaskState.FAILED

    def closing(self, attempt: Attempt, cause: Cause, now: float, detail: AttemptDetail,
                suspect: bool = False) -> Closing:
        """The attempt's ending as decided; nothing changes until it is applied (:meth:`close`)."""
        return Closing(attempt, cause, now, detail, self.outcome(attempt, cause, detail), suspect)

    def close(self, closing: Closing) -> None:
        """Apply a decided ending: its task becomes done, failed, or pending again."""
        attempt, cause, next_state = closing.attempt, closing.cause, closing.outcome
        attempt.cause, attempt.ended, attempt.detail = cause, closing.ended, closing.detail
        del self.running[attempt.task]
        task = attempt.task
        self.states[task] = next_state
        if cause is Cause.CANCELLED:  # the sweep stops here: nothing is queued or counted
            return
        if cause is not Cause.RETURNED:
            self.suspects.discard(task)
        if next_state is TaskState.DONE:
            self.n_done += 1
        elif cause is Cause.RETURNED:
            self._returned.append(task)
            if closing.suspect:
                self.suspects.add(task)
        else:
            self._count_failure(attempt, cause, closing.detail, next_state)

    def _count_failure(self, attempt: Attempt, cause: Cause, detail: AttemptDetail, next_state: TaskState) -> None:
        task = attempt.task
        if cause is Cause.WALLTIME and detail.fits_fresh_worker:
            self.walltime_retried.add(task)
        else:
            self.failure_counts[task] = self.failure_counts.get(task, 0) + 1
        self.failed_attempts.setdefault(task, []).append(attempt)
        if next_state is TaskState.PENDING:
            self._returned.appendleft(task)
        else:
            self.n_failed += 1

    def cancel(self, now: float) -> list[Closing]:
        """Every attempt in workers' hands, to end as cancelled (the tasks stay unfinished)."""
        detail = AttemptDetail(summary="the sweep was cancelled")
        return [Closing(attempt, Cause.CANCELLED, now, detail, TaskState.PENDING) for attempt in self.running.values()]
