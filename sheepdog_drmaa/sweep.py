"""Task states, leases and retry decisions of one sweep. Pure: no I/O, no clock, no threads.

The runner feeds it what happens (a worker says hello, asks for a task, reports, dies, goes
quiet) with the current time, and asks it what to do (how many workers to submit, which to
terminate). Not thread-safe; the runner serialises calls.
"""
from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .failures import Cause, Ending, ExitInfo, classify, is_retryable

# Runtime limits: finished durations remembered, the margin on their 90th percentile, and how
# close to its limit a worker's end counts as "ended at its limit" (its clock starts before hello).
DURATION_SAMPLES = 256
TASK_TIME_MARGIN = 1.25
WALLTIME_SLACK = 3.0


class TaskState(str, enum.Enum):
    """A task's state, as stored."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# What the user is shown for each task state (a pending task is "queued" to them).
COUNT_NAMES = {TaskState.DONE: "done", TaskState.FAILED: "failed", TaskState.RUNNING: "running",
               TaskState.PENDING: "queued"}


def counts_by_name(per_state: Mapping[str, int]) -> dict[str, int]:
    """Task counts keyed as the user sees them, from counts keyed by stored TaskState value."""
    return {name: per_state.get(state.value, 0) for state, name in COUNT_NAMES.items()}


class SweepPhase(str, enum.Enum):
    """Where a whole sweep is in its life, as stored and shown by the command line."""

    CREATING = "creating"        # only in stores of version 0.1.0: a sweep whose tasks were not all stored
    CREATED = "created"
    RUNNING = "running"
    FINISHED = "finished"        # every task done
    FAILED = "failed"            # every task ended, some failed
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its client stopped early (an error, a lost store); a named sweep resumes


@dataclass
class Attempt:
    """One try of one task by one worker; ends with exactly one cause."""

    task: int
    number: int
    worker: str
    started: float
    last_seen: float
    host: str | None = None
    cause: Cause | None = None
    ended: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Worker:
    id: str
    reached: bool = False        # said hello to the server
    started: float | None = None  # when it said hello: its runtime limit counts from about then
    host: str | None = None   # the execution host it said hello from
    setup_error: str | None = None  # why it could not load the function, if it could not
    attempt: Attempt | None = None
    tasks_leased: int = 0
    retiring: bool = False       # told there is no more work; will exit on its own
    terminated: bool = False     # we asked the scheduler to remove it; its ending is ours
    ended: bool = False


@dataclass(frozen=True)
class StartFailure:
    """Why workers cannot start: the last early death seen."""

    worker: str
    ending: Ending
    count: int
    setup_error: str | None = None


class SweepState:
    """Every task's state and every live worker's lease for one sweep."""

    def __init__(
        self,
        n_tasks: int,
        *,
        retries: int = 3,
        retry_exceptions: tuple[str, ...] = (),
        tasks_per_worker: int | None = None,
        max_workers: int = 1000,
        timeout: float | None = None,
        heartbeat_timeout: float = 60.0,
        start_failure_limit: int = 5,
        done: Iterable[int] = (),
        attempts_made: Mapping[int, int] | None = None,
        walltime: float | None = None,
        task_time: float | None = None,
    ) -> None:
        self.n_tasks = n_tasks
        self.retries = retries
        self.retry_exceptions = retry_exceptions
        self.tasks_per_worker = tasks_per_worker
        self.max_workers = max_workers
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.start_failure_limit = start_failure_limit
        self.walltime = walltime      # each worker's runtime limit, if it has one
        self.task_time = task_time    # the user's guess of one task's duration, until some have run
        self.durations: collections.deque[float] = collections.deque(maxlen=DURATION_SAMPLES)
        self.walltime_retried: set[int] = set()  # tasks already retried once, uncounted, after a walltime end
        self.states: list[TaskState] = [TaskState.PENDING] * n_tasks
        for index in done:
            self.states[index] = TaskState.DONE
        self.pending: collections.deque[int] = collections.deque(
            i for i, s in enumerate(self.states) if s is TaskState.PENDING)
        # Attempts are numbered on from those an earlier client made, so none is recorded twice.
        self.attempt_numbers: dict[int, int] = dict(attempts_made or {})
        self.failure_counts: dict[int, int] = {}
        self.failed_attempts: dict[int, list[Attempt]] = {}
        self.workers: dict[str, Worker] = {}
        self.running: dict[str, Attempt] = {}
        self.n_done = sum(1 for s in self.states if s is TaskState.DONE)
        self.n_failed = 0
        self.early_deaths = 0
        self.last_early_death: StartFailure | None = None

    # -- workers -------------------------------------------------------------------------

    def add_workers(self, ids: Iterable[str]) -> None:
        for worker_id in ids:
            self.workers[worker_id] = Worker(worker_id)

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.ended and not w.terminated]

    def hello(self, worker_id: str, host: str | None = None, now: float | None = None) -> bool:
        """A worker reached the server. False if it is not one of ours (it is told to exit)."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.ended or worker.terminated:
            return False
        worker.reached, worker.host, worker.started = True, host, now
        return True

    def setup_failed(self, worker_id: str, error: str) -> None:
        """A worker reached the server but could not load the function (a module missing on the node)."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.setup_error = error
            worker.retiring = True

    def lease(self, worker_id: str, now: float) -> Attempt | None:
        """Give the worker the next pending task, or None: it should exit."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.ended or worker.terminated or not worker.reached or worker.retiring:
            return None
        if worker.attempt is not None:  # a worker asks again only after reporting; be safe
            return None
        self.early_deaths = 0  # a worker got going: whatever killed the earlier ones is not general
        full = self.tasks_per_worker is not None and worker.tasks_leased >= self.tasks_per_worker
        if full or not self.pending or self._out_of_time(worker, now):
            worker.retiring = True
            return None
        task = self.pending.popleft()
        number = self.attempt_numbers.get(task, 0) + 1
        self.attempt_numbers[task] = number
        attempt = Attempt(task=task, number=number, worker=worker_id, started=now, last_seen=now,
                          host=worker.host)
        self.states[task] = TaskState.RUNNING
        worker.attempt = attempt
        worker.tasks_leased += 1
        self.running[worker_id] = attempt
        return attempt

    def heartbeat(self, worker_id: str, task: int, number: int, now: float) -> bool:
        """Record a sign of life; False if that attempt is no longer the current one."""
        attempt = self.current(worker_id, task, number)
        if attempt is None:
            return False
        attempt.last_seen = now
        return True

    def finish(self, worker_id: str, task: int, number: int, cause: Cause, now: float,
               detail: dict[str, Any] | None = None) -> Attempt | None:
        """A worker reported a result or an exception. None if the attempt was superseded."""
        attempt = self.current(worker_id, task, number)
        if attempt is None:
            return None
        self._end(attempt, cause, now, detail or {})
        return attempt

    def worker_ended(self, info: ExitInfo, now: float) -> Attempt | None:
        """The scheduler says a worker is gone; end whatever attempt it still held."""
        worker = self.workers.get(info.worker)
        if worker is None or worker.ended:
            return None
        worker.ended = True
        ending = classify(info)
        attempt = self.running.get(info.worker)
        if worker.terminated:
            return None
        if worker.tasks_leased == 0 and not ending.clean:
            self.early_deaths += 1
            self.last_early_death = StartFailure(info.worker, ending, self.early_deaths, worker.setup_error)
        if attempt is None:
            return None
        detail = {"summary": ending.summary, "exit_status": info.exit_status, "signal": info.signal,
                  "core_dumped": info.core_dumped, "resource_usage": dict(info.resource_usage)}
        cause = ending.cause
        if self._at_its_limit(worker, now):
            cause = Cause.WALLTIME
            detail.update(self._walltime_detail(worker, attempt, ending.summary))
        self._end(attempt, cause, now, detail)
        return attempt

    # -- runtime limits ----------------------------------------------------------------------

    def expected_task_seconds(self) -> float:
        """How long a task is expected to take: a high percentile of those finished, with a margin
        (the user's task_time until there are some); 0 when nothing is known."""
        if self.durations:
            ordered = sorted(self.durations)
            return ordered[int(0.9 * (len(ordered) - 1))] * TASK_TIME_MARGIN
        return (self.task_time or 0.0) * TASK_TIME_MARGIN

    def _out_of_time(self, worker: Worker, now: float) -> bool:
        """A worker whose time left is below a task's expected duration starts no task: it retires,
        and a fresh worker takes its place. A fresh worker always takes one (nothing would fit better)."""
        if self.walltime is None or worker.started is None or worker.tasks_leased == 0:
            return False
        left = self.walltime - (now - worker.started) - WALLTIME_SLACK
        return left < self.expected_task_seconds()

    def _at_its_limit(self, worker: Worker, now: float) -> bool:
        return (self.walltime is not None and worker.started is not None
                and now - worker.started >= self.walltime - WALLTIME_SLACK)

    def _walltime_detail(self, worker: Worker, attempt: Attempt, ending: str) -> dict[str, Any]:
        """The summary of an attempt ended at its worker's limit, and whether a fresh worker could fit it."""
        assert self.walltime is not None and worker.started is not None
        # It had less than a whole walltime only if it was not the worker's first task; and a task
        # is retried uncounted once at most, so that a wrong guess of its duration cannot loop.
        fits = worker.tasks_leased > 1 and attempt.task not in self.walltime_retried
        if fits:
            summary = (f"its worker reached its runtime limit of {self.walltime:g} s ({ending}); the task "
                       "had started late in the worker's life and is tried again in a fresh worker, not "
                       "counted against retries")
        else:
            summary = (f"the task ran for the whole runtime limit of {self.walltime:g} s and was ended at it "
                       f"({ending}); it cannot finish in any worker: raise walltime= (or the h_rt/--time "
                       "request), or split the task")
        return {"summary": summary, "fits_fresh_worker": fits}

    def overdue(self, now: float) -> list[tuple[str, Cause]]:
        """Workers whose attempt ran past the timeout or went quiet, with the cause to record."""
        late = []
        for worker_id, attempt in self.running.items():
            if self.timeout is not None and now - attempt.started > self.timeout:
                late.append((worker_id, Cause.TIMEOUT))
            elif now - attempt.last_seen > self.heartbeat_timeout:
                late.append((worker_id, Cause.LOST))
        return late

    def expire(self, worker_id: str, cause: Cause, now: float) -> Attempt | None:
        """End a worker's attempt on our own decision (lost, timeout); the job is being terminated."""
        worker = self.workers[worker_id]
        worker.terminated = True
        attempt = self.running.get(worker_id)
        if attempt is None:
            return None
        if cause is Cause.TIMEOUT:
            summary = f"the task ran longer than the timeout of {self.timeout:g} s; its job was terminated"
        else:
            summary = (f"no heartbeat for {now - attempt.last_seen:.1f} s while the scheduler still "
                       "reported the job running; its job was terminated")
        self._end(attempt, cause, now, {"summary": summary})
        return attempt

    def surplus_workers(self) -> list[str]:
        """Once nothing is pending, workers that never started are not needed: mark and return them."""
        if self.pending:
            return []
        surplus = [w for w in self.workers.values() if not (w.reached or w.ended or w.terminated)]
        for worker in surplus:
            worker.terminated = True
        return [w.id for w in surplus]

    def workers_to_submit(self) -> int:
        """How many new workers the pending tasks need now: one for each that no spare worker (idle,
        or still queued) will take. A spare worker may never come (sent to a dead node, say): it
        does not hold back the others' replacements."""
        if not self.pending:
            return 0
        live = self.live_workers()
        spare = sum(1 for w in live if w.attempt is None and not w.retiring)
        wanted = min(len(self.pending) - spare, self.max_workers - len(live))
        return max(wanted, 0)

    def cancel(self, now: float) -> None:
        """End every running attempt as cancelled (the tasks stay unfinished); no worker gets more work."""
        for attempt in list(self.running.values()):
            attempt.cause, attempt.ended = Cause.CANCELLED, now
            attempt.detail = {"summary": "the sweep was cancelled"}
            self.states[attempt.task] = TaskState.PENDING
            self.workers[attempt.worker].attempt = None
        self.running.clear()
        for worker in self.workers.values():
            worker.terminated = True

    # -- state -----------------------------------------------------------------------------

    @property
    def start_failure(self) -> StartFailure | None:
        if self.early_deaths >= self.start_failure_limit:
            return self.last_early_death
        return None

    @property
    def finished(self) -> bool:
        return self.n_done + self.n_failed == self.n_tasks

    def counts(self) -> dict[str, int]:
        return counts_by_name({TaskState.DONE.value: self.n_done, TaskState.FAILED.value: self.n_failed,
                               TaskState.RUNNING.value: len(self.running), TaskState.PENDING.value: len(self.pending)})

    def current(self, worker_id: str, task: int, number: int) -> Attempt | None:
        """The worker's running attempt, if it is that task's attempt ``number``; else None (superseded)."""
        attempt = self.running.get(worker_id)
        if attempt is None or attempt.task != task or attempt.number != number:
            return None
        return attempt

    def outcome(self, attempt: Attempt, cause: Cause, detail: dict[str, Any]) -> TaskState:
        """What the attempt's task becomes if the attempt ends so; changes nothing (the runner stores
        that first, and ends the attempt only once it is stored)."""
        if cause is Cause.RESULT:
            return TaskState.DONE
        if cause is Cause.WALLTIME:
            return TaskState.PENDING if detail.get("fits_fresh_worker") else TaskState.FAILED
        exception_types = tuple(detail.get("exception_types", ()))
        retryable = is_retryable(cause, exception_types, self.retry_exceptions)
        if retryable and self.failure_counts.get(attempt.task, 0) + 1 <= self.retries:
            return TaskState.PENDING
        return TaskState.FAILED

    def _end(self, attempt: Attempt, cause: Cause, now: float, detail: dict[str, Any]) -> None:
        next_state = self.outcome(attempt, cause, detail)
        attempt.cause, attempt.ended, attempt.detail = cause, now, detail
        del self.running[attempt.worker]
        self.workers[attempt.worker].attempt = None
        task = attempt.task
        self.states[task] = next_state
        if next_state is TaskState.DONE:
            self.n_done += 1
            self.durations.append(now - attempt.started)
            return
        if cause is Cause.WALLTIME and detail.get("fits_fresh_worker"):
            self.walltime_retried.add(task)
        else:
            self.failure_counts[task] = self.failure_counts.get(task, 0) + 1
        self.failed_attempts.setdefault(task, []).append(attempt)
        if next_state is TaskState.PENDING:
            self.pending.appendleft(task)
        else:
            self.n_failed += 1
