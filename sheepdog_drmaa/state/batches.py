"""How many tasks a worker is leased at a time, and what its runtime limit leaves room for. Pure.

A worker is leased a batch of tasks at a time and runs them in order. The batch grows while the
tasks prove short, so that a round trip to the server carries a fraction of a second of work,
and shrinks towards the end of the sweep so that no worker's backlog holds up the last results.
"""
from __future__ import annotations

import collections
import math

from ..model import Attempt
from .workers import Worker

# Runtime limits: finished durations remembered, the margin on their 90th percentile, and how
# close to its limit a worker's end counts as "ended at its limit" (its clock starts before hello).
DURATION_SAMPLES = 256
TASK_TIME_MARGIN = 1.25
WALLTIME_SLACK = 3.0

# Batches: the work one lease aims to carry, in seconds (expected), the most tasks in one, and
# the share of the pending tasks one worker may hold (1/BATCH_SHARE of an even split).
BATCH_SECONDS = 0.25
MAX_BATCH = 1000
BATCH_SHARE = 2


class BatchPolicy:
    """Batch sizes from the durations of finished tasks, within each worker's runtime limit."""

    def __init__(self, *, tasks_per_worker: int | None, timeout: float | None, walltime: float | None,
                 task_time: float | None) -> None:
        self.tasks_per_worker = tasks_per_worker
        self.timeout = timeout
        self.walltime = walltime      # each worker's runtime limit, if it has one
        self.task_time = task_time    # the user's guess of one task's duration, until some have run
        self.durations: collections.deque[float] = collections.deque(maxlen=DURATION_SAMPLES)
        self._expected: float | None = None  # expected_task_seconds, until durations change enough
        self._samples_since = 0

    def task_finished(self, seconds: float) -> None:
        self.durations.append(seconds)
        self._samples_since += 1

    def expected_task_seconds(self) -> float:
        """How long a task is expected to take: a high percentile of those finished, with a margin
        (the user's task_time until there are some); 0 when nothing is known."""
        if not self.durations:
            return (self.task_time or 0.0) * TASK_TIME_MARGIN
        if self._expected is None or self._samples_since >= DURATION_SAMPLES // 8:
            ordered = sorted(self.durations)
            self._expected = ordered[int(0.9 * (len(ordered) - 1))] * TASK_TIME_MARGIN
            self._samples_since = 0
        return self._expected

    def size(self, worker: Worker, pending: int, n_workers: int, now: float) -> int:
        """How many tasks the worker gets now: 0 if it should exit.

        Short tasks come many to a lease, doubling from one while they prove short; never more than
        a fair share of what is left, nor than fit in the worker's remaining runtime.
        """
        if not pending:
            return 0
        allowed = pending
        if self.tasks_per_worker is not None:
            allowed = min(allowed, self.tasks_per_worker - worker.tasks_leased)
        expected = self.expected_task_seconds()
        if self.walltime is not None and worker.started is not None and worker.tasks_leased:
            # A worker that has run tasks starts only what it can finish; a fresh one always takes
            # one (nothing would fit better).
            left = self.walltime - (now - worker.started) - WALLTIME_SLACK
            fit = math.floor(left / expected) if expected > 0 else (allowed if left > 0 else 0)
            allowed = min(allowed, fit)
        if allowed <= 0:
            return 0
        if expected <= 0 or not self.durations:
            return 1  # nothing known yet of how long a task takes
        by_time = max(int(BATCH_SECONDS / expected), 1)
        if self.timeout is not None:
            by_time = min(by_time, max(int(self.timeout / 4 / expected), 1))
        share = max(pending // (BATCH_SHARE * max(n_workers, 1)), 1)
        return min(allowed, by_time, share, 2 * max(worker.last_batch, 1), MAX_BATCH)

    def at_its_limit(self, worker: Worker, now: float) -> bool:
        return (self.walltime is not None and worker.started is not None
                and now - worker.started >= self.walltime - WALLTIME_SLACK)

    def walltime_ending(self, worker: Worker, attempt: Attempt, ending: str, retried_before: bool) -> tuple[str, bool]:
        """The summary of an attempt ended at its worker's limit, and whether a fresh worker could fit it."""
        assert self.walltime is not None and worker.started is not None
        # It had less than a whole walltime only if it was not the worker's first task; and a task
        # is retried uncounted once at most, so that a wrong guess of its duration cannot loop.
        first_task = worker.tasks_leased - len(worker.held) == 0 and attempt is next(iter(worker.held.values()))
        fits = not first_task and not retried_before
        if fits:
            summary = (f"its worker reached its runtime limit of {self.walltime:g} s ({ending}); the task "
                       "had started late in the worker's life and is tried again in a fresh worker, not "
                       "counted against retries")
        else:
            summary = (f"the task ran for the whole runtime limit of {self.walltime:g} s and was ended at it "
                       f"({ending}); it cannot finish in any worker: raise walltime= (or the h_rt/--time "
                       "request), or split the task")
        return summary, fits
