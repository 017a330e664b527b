"""Task states, leases and retry decisions of one sweep. Pure: no I/O, no clock, no threads.

The runner feeds it what happens (a worker says hello, asks for tasks, reports, dies, goes
quiet) with the current time, and asks it what to do (how many workers to submit, which to
terminate). Not thread-safe; the runner serialises calls.

A worker is leased a batch of tasks at a time and runs them in order. The batch grows while the
tasks prove short, so that a round trip to the server carries a fraction of a second of work,
and shrinks towards the end of the sweep so that no worker's backlog holds up the last results.
When a worker ends holding a batch, only the attempt it was running is charged with the ending;
the rest go back to the queue uncounted.
"""
from __future__ import annotations

import array
import collections
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .failures import classify, is_retryable
from .model import Cause, Ending, ExitInfo, TaskState, counts_by_name

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

# A worker the scheduler shows started that has not said hello after this many heartbeat
# timeouts (and at least HELLO_SECONDS: a loaded node starts Python slowly) is written off: its
# host is taken not to reach the server.
HELLO_TIMEOUTS = 2
HELLO_SECONDS = 10.0


@dataclass
class Attempt:
    """One try of one task by one worker; ends with exactly one cause."""

    task: int
    number: int
    worker: str
    started: float   # when it was leased, until the worker says it started later (a batch's later tasks)
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
    held: dict[int, Attempt] = field(default_factory=dict)  # task -> its attempt, in the order they run
    current: Attempt | None = None  # the held attempt running now, as far as the server knows
    death_detail: dict[str, Any] = field(default_factory=dict)  # what the worker said as its task died
    last_seen: float = 0.0
    last_batch: int = 0
    tasks_leased: int = 0
    dispatched: float | None = None  # first seen started by the scheduler, before its hello
    dispatched_to: str | None = None
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
        memory_limit: int | None = None,
    ) -> None:
        self.n_tasks = n_tasks
        self.retries = retries
        self.retry_exceptions = retry_exceptions
        self.tasks_per_worker = tasks_per_worker
        self.max_workers = max_workers
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.hello_timeout = max(HELLO_TIMEOUTS * heartbeat_timeout, HELLO_SECONDS)
        self.start_failure_limit = start_failure_limit
        self.walltime = walltime      # each worker's runtime limit, if it has one
        self.task_time = task_time    # the user's guess of one task's duration, until some have run
        self.memory_limit = memory_limit  # each worker's memory request in bytes, to tell kills for memory
        self.durations: collections.deque[float] = collections.deque(maxlen=DURATION_SAMPLES)
        self._expected: float | None = None  # expected_task_seconds, until durations change enough
        self._samples_since = 0
        self.walltime_retried: set[int] = set()  # tasks already retried once, uncounted, after a walltime end
        self.states: list[TaskState] = [TaskState.PENDING] * n_tasks
        for index in done:
            self.states[index] = TaskState.DONE
        # Pending tasks: those never tried, in order, then (served first) those to be tried again.
        self._fresh = array.array("q", (i for i, s in enumerate(self.states) if s is TaskState.PENDING))
        self._fresh_next = 0
        self._returned: collections.deque[int] = collections.deque()
        # Attempts are numbered on from those an earlier client made, so none is recorded twice.
        self.attempt_numbers = array.array("l", bytes(n_tasks * array.array("l").itemsize))
        for index, made in (attempts_made or {}).items():
            self.attempt_numbers[index] = made
        self.failure_counts: dict[int, int] = {}
        self.failed_attempts: dict[int, list[Attempt]] = {}
        self.workers: dict[str, Worker] = {}    # every worker not yet known to have ended
        self.unreached: dict[str, Worker] = {}  # those not yet heard from (queued, starting, or lost on the way)
        self.holding: dict[str, Worker] = {}    # those holding leased tasks
        self.running: dict[int, Attempt] = {}   # task -> its attempt in a worker's hands
        self.n_done = sum(1 for s in self.states if s is TaskState.DONE)
        self.n_failed = 0
        self.early_deaths = 0
        self.last_early_death: StartFailure | None = None
        self.silent_hosts: set[str] = set()  # hosts whose workers never reached the server
        self.suspects: set[int] = set()  # tasks held by a worker that died not saying which it ran
        self.greeted: dict[str, Worker] = {}  # workers that said hello and have not asked for work yet
        self.last_hello_from: dict[str, float] = {}  # host -> when a worker there last said hello
        self.any_reached = False

    # -- pending tasks ---------------------------------------------------------------------

    @property
    def n_pending(self) -> int:
        return len(self._fresh) - self._fresh_next + len(self._returned)

    def _take_pending(self) -> int:
        if self._returned:
            return self._returned.popleft()
        task = self._fresh[self._fresh_next]
        self._fresh_next += 1
        return task

    # -- workers -------------------------------------------------------------------------

    def add_workers(self, ids: Iterable[str]) -> None:
        for worker_id in ids:
            worker = Worker(worker_id)
            self.workers[worker_id] = self.unreached[worker_id] = worker

    def hello(self, worker_id: str, host: str | None = None, now: float = 0.0) -> bool:
        """A worker reached the server. False if it is not one of ours (it is told to exit)."""
        worker = self.workers.get(worker_id)
        if worker is not None and worker.terminated and worker.dispatched_to in self.silent_hosts and host:
            self.silent_hosts.discard(host)  # written off as silent, but only slow: its host answers
        if worker is None or worker.terminated:
            return False
        if not worker.reached:  # a hello repeated because its answer was lost changes nothing
            worker.reached, worker.host, worker.started = True, host, now
            self.any_reached = True
            self.greeted[worker_id] = worker
            if host is not None:
                self.last_hello_from[host] = now
        worker.last_seen = now
        self.unreached.pop(worker_id, None)
        return True

    def setup_failed(self, worker_id: str, error: str) -> None:
        """A worker reached the server but could not load the function (a module missing on the node)."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.setup_error = error
            worker.retiring = True

    def lease(self, worker_id: str, now: float) -> list[Attempt]:
        """The next batch of pending tasks for the worker, in the order it runs them; empty: it should exit."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.terminated or not worker.reached or worker.retiring:
            return []
        worker.last_seen = now
        self.greeted.pop(worker_id, None)
        if worker.held:  # it reported all it had: what it still holds is a lease whose answer it lost
            return list(worker.held.values())
        self.early_deaths = 0  # a worker got going: whatever killed the earlier ones is not general
        size = self._batch_size(worker, now)
        if not size:
            worker.retiring = True
            return []
        batch: list[Attempt] = []
        for _ in range(size):
            task = self._take_pending()
            if task in self.suspects and batch:  # a suspect goes alone: put it back for the next lease
                self._returned.appendleft(task)
                break
            number = self.attempt_numbers[task] + 1
            self.attempt_numbers[task] = number
            attempt = Attempt(task=task, number=number, worker=worker_id, started=now, host=worker.host)
            self.states[task] = TaskState.RUNNING
            worker.held[task] = attempt
            self.running[task] = attempt
            batch.append(attempt)
            if task in self.suspects:
                break
        worker.current = batch[0]  # it starts the first at once
        worker.tasks_leased += size
        worker.last_batch = size
        self.holding[worker_id] = worker
        return batch

    def _batch_size(self, worker: Worker, now: float) -> int:
        """How many tasks the worker gets now: 0 if it should exit.

        Short tasks come many to a lease, doubling from one while they prove short; never more than
        a fair share of what is left, nor than fit in the worker's remaining runtime.
        """
        pending = self.n_pending
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
        share = max(pending // (BATCH_SHARE * max(len(self.workers), 1)), 1)
        return min(allowed, by_time, share, 2 * max(worker.last_batch, 1), MAX_BATCH)

    def heartbeat(self, worker_id: str, running: tuple[int, int, float] | None, now: float) -> bool:
        """A sign of life from the worker, naming the task it runs (and for how long) if any.

        False if the worker holds nothing the server still counts on (it was written off).
        """
        worker = self.workers.get(worker_id)
        if worker is None or worker.terminated:
            return False
        worker.last_seen = now
        if running is not None:
            task, number, elapsed = running
            attempt = worker.held.get(task)
            if attempt is not None and attempt.number == number:
                worker.current = attempt
                attempt.started = now - max(elapsed, 0.0)
        return bool(worker.held)

    def task_died(self, worker_id: str, task: int, number: int, detail: Mapping[str, Any]) -> None:
        """The worker's own word, as its task process died, of which task that was (and what it measured)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        attempt = worker.held.get(task)
        if attempt is not None and attempt.number == number:
            worker.current = attempt
            worker.death_detail = dict(detail)

    def finish(self, worker_id: str, task: int, number: int, cause: Cause, now: float,
               detail: dict[str, Any] | None = None) -> Attempt | None:
        """A worker reported a result or an exception. None if the attempt was superseded."""
        attempt = self.current(worker_id, task, number)
        if attempt is None:
            return None
        worker = self.workers[worker_id]
        worker.last_seen = now
        self._end(attempt, cause, now, detail or {})
        if worker.current is None and worker.held:  # the next in its batch runs now
            worker.current = next(iter(worker.held.values()))
            worker.current.started = max(worker.current.started, now)
        return attempt

    def worker_ended(self, info: ExitInfo, now: float, stderr_tail: str = "") -> list[Attempt]:
        """The scheduler says a worker is gone; end whatever attempts it still held.

        ``stderr_tail``: the end of the worker's stderr file, where a scheduler may say it killed
        the worker for memory."""
        worker = self.workers.get(info.worker)
        if worker is None:
            return []
        worker.ended = True
        self.unreached.pop(info.worker, None)
        ending = classify(info, self.memory_limit, stderr_tail)
        charged = None if worker.terminated else self._charged(worker)
        if charged is None:
            self._forget(worker)
            # Ended before running a task, by a failure or (never having reached the server) at all.
            if not worker.terminated and worker.tasks_leased == 0 and not (ending.clean and worker.reached):
                self.early_deaths += 1
                self.last_early_death = StartFailure(info.worker, ending, self.early_deaths, worker.setup_error)
            return []
        why = f"its worker ended ({ending.summary})"
        if not self._certain(worker):
            ended = self._return_held(worker, now, why)
        else:
            detail = {"summary": ending.summary, "exit_status": info.exit_status, "signal": info.signal,
                      "core_dumped": info.core_dumped, "resource_usage": dict(info.resource_usage),
                      **worker.death_detail}
            cause = ending.cause
            if self._at_its_limit(worker, now):
                cause = Cause.WALLTIME
                detail.update(self._walltime_detail(worker, charged, ending.summary))
            ended = self._end_held(worker, charged, cause, now, detail, why)
        self._forget(worker)
        return ended

    def _forget(self, worker: Worker) -> None:
        """A worker that has ended: nothing more is asked of it, or kept about it."""
        del self.workers[worker.id]
        self.holding.pop(worker.id, None)
        self.greeted.pop(worker.id, None)

    def _charged(self, worker: Worker) -> Attempt | None:
        """The held attempt an ending is charged to: the one running, as far as the server knows."""
        if worker.current is not None and worker.current.task in worker.held:
            return worker.current
        return next(iter(worker.held.values()), None)

    @staticmethod
    def _certain(worker: Worker) -> bool:
        """Whether the server knows which held task a whole worker's death ended: the only one it
        held, or the one the worker's parent named as its task process died. Otherwise the task
        running might be any not reported yet (the worker moves on without telling)."""
        return len(worker.held) == 1 or bool(worker.death_detail)

    def _return_held(self, worker: Worker, now: float, why: str) -> list[Attempt]:
        """End every held attempt uncounted, its task to be tried alone next (a suspect): then the
        task that killed the worker, if one did, is charged on its own."""
        returned = list(worker.held.values())
        for attempt in returned:
            self._end(attempt, Cause.RETURNED, now, {
                "summary": f"{why} while it held {len(returned)} tasks of a batch, and which one ran is not "
                           "known: each goes back uncounted, to be tried alone"})
            self.suspects.add(attempt.task)
        return returned

    def _end_held(self, worker: Worker, charged: Attempt, cause: Cause, now: float, detail: dict[str, Any],
                  why: str) -> list[Attempt]:
        """End the charged attempt with ``cause``; the worker's other held attempts go back uncounted."""
        others = [a for a in worker.held.values() if a is not charged]
        self._end(charged, cause, now, detail)
        for attempt in others:
            self._end(attempt, Cause.RETURNED, now, {
                "summary": f"{why} while it held this task in its batch, not running it; back in the queue, "
                           "not counted against retries"})
        return [charged, *others]

    def unresponsive(self, started: Mapping[str, str | None], now: float) -> list[Worker]:
        """Workers the scheduler has shown started (``started``: worker -> host) for longer than the
        hello timeout without having said hello: marked terminated and returned. Their host is
        written off (and each such host counts as a worker that could not start) unless another
        worker said hello from it since: then the scheduler's view was stale (a job that ended
        while it was unreachable, say), not the host dead."""
        stuck = []
        for hung in list(self.greeted.values()):  # said hello, then never asked for work (hung loading f?)
            if hung.started is not None and now - hung.started > self.hello_timeout:
                del self.greeted[hung.id]
                if not hung.terminated and not hung.retiring:
                    hung.terminated = True
                    self.early_deaths += 1
                    ending = Ending(Cause.LOST, f"it said hello from {hung.host} but asked for no work in "
                                                f"{now - hung.started:.0f} s (loading the function hung?)", False)
                    self.last_early_death = StartFailure(hung.id, ending, self.early_deaths)
                    stuck.append(hung)
        for worker_id, host in started.items():
            worker = self.unreached.get(worker_id)
            if worker is None or worker.terminated:
                continue
            if worker.dispatched is None:
                worker.dispatched, worker.dispatched_to = now, host
            elif now - worker.dispatched > self.hello_timeout:
                worker.terminated = True
                del self.unreached[worker_id]
                silent = worker.dispatched_to
                if silent is not None and self.last_hello_from.get(silent, -math.inf) > worker.dispatched:
                    stuck.append(worker)  # its host answers: only this job is stale
                    continue
                if not self.any_reached:  # no worker ever reached the server: it is not one host's fault
                    self.early_deaths = self.start_failure_limit
                elif silent is None or silent not in self.silent_hosts:  # a dead host counts once, however many
                    self.early_deaths += 1
                if silent is not None:
                    self.silent_hosts.add(silent)
                where = f"on {worker.dispatched_to}" if worker.dispatched_to else "by the scheduler"
                ending = Ending(Cause.LOST, f"it was started {where} {now - worker.dispatched:.0f} s ago and never "
                                            "reached the server", False)
                self.last_early_death = StartFailure(worker_id, ending, self.early_deaths)
                stuck.append(worker)
        return stuck

    # -- runtime limits ----------------------------------------------------------------------

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

    def _at_its_limit(self, worker: Worker, now: float) -> bool:
        return (self.walltime is not None and worker.started is not None
                and now - worker.started >= self.walltime - WALLTIME_SLACK)

    def _walltime_detail(self, worker: Worker, attempt: Attempt, ending: str) -> dict[str, Any]:
        """The summary of an attempt ended at its worker's limit, and whether a fresh worker could fit it."""
        assert self.walltime is not None and worker.started is not None
        # It had less than a whole walltime only if it was not the worker's first task; and a task
        # is retried uncounted once at most, so that a wrong guess of its duration cannot loop.
        first_task = worker.tasks_leased - len(worker.held) == 0 and attempt is next(iter(worker.held.values()))
        fits = not first_task and attempt.task not in self.walltime_retried
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
        """Workers whose running attempt ran past the timeout or that went quiet, with the cause to record."""
        late = []
        for worker_id, worker in self.holding.items():
            current = worker.current
            if self.timeout is not None and current is not None and now - current.started > self.timeout:
                late.append((worker_id, Cause.TIMEOUT))
            elif now - worker.last_seen > self.heartbeat_timeout:
                late.append((worker_id, Cause.LOST))
        return late

    def expire(self, worker_id: str, cause: Cause, now: float) -> list[Attempt]:
        """End a worker's attempts on our own decision (lost, timeout); the job is being terminated."""
        worker = self.workers[worker_id]
        worker.terminated = True
        self.unreached.pop(worker_id, None)
        charged = self._charged(worker)
        if charged is None:
            return []
        if cause is Cause.LOST and not self._certain(worker):
            return self._return_held(worker, now, "its worker went quiet")
        if cause is Cause.TIMEOUT:
            summary = f"the task ran longer than the timeout of {self.timeout:g} s; its job was terminated"
            why = "its worker was terminated for another task's timeout"
        else:
            summary = (f"no sign of life from its worker for {now - worker.last_seen:.1f} s while the scheduler "
                       "still reported the job running; its job was terminated")
            why = "its worker went quiet"
        return self._end_held(worker, charged, cause, now, {"summary": summary}, why)

    def surplus_workers(self) -> list[str]:
        """Once nothing is pending, workers that never started are not needed: mark and return them."""
        if self.n_pending:
            return []
        surplus = [w for w in self.unreached.values() if not w.terminated]
        for worker in surplus:
            worker.terminated = True
        self.unreached.clear()
        return [w.id for w in surplus]

    def workers_to_submit(self) -> int:
        """How many new workers the pending tasks need now: one for each that no spare worker (idle,
        or still queued) will take. A spare worker may never come (sent to a dead node, say): it
        does not hold back the others' replacements. A worker told to leave that holds nothing is
        not counted, however long the scheduler takes to see it gone."""
        pending = self.n_pending
        if not pending:
            return 0
        width = spare = 0
        for worker in self.workers.values():
            if worker.terminated or (worker.retiring and not worker.held):
                continue
            width += 1
            if not worker.held and not worker.retiring:
                spare += 1
        return max(min(pending - spare, self.max_workers - width), 0)

    def cancel(self, now: float) -> list[Attempt]:
        """End every held attempt as cancelled (the tasks stay unfinished); no worker gets more work."""
        cancelled = list(self.running.values())
        for attempt in cancelled:
            attempt.cause, attempt.ended = Cause.CANCELLED, now
            attempt.detail = {"summary": "the sweep was cancelled"}
            self.states[attempt.task] = TaskState.PENDING
        self.running.clear()
        self.holding.clear()
        for worker in self.workers.values():
            worker.held.clear()
            worker.current = None
            worker.terminated = True
        self.unreached.clear()
        return cancelled

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
                               TaskState.RUNNING.value: len(self.running), TaskState.PENDING.value: self.n_pending})

    def current(self, worker_id: str, task: int, number: int) -> Attempt | None:
        """The worker's held attempt of ``task`` if it is attempt ``number``; else None (superseded)."""
        worker = self.workers.get(worker_id)
        attempt = worker.held.get(task) if worker is not None else None
        if attempt is None or attempt.number != number:
            return None
        return attempt

    def outcome(self, attempt: Attempt, cause: Cause, detail: dict[str, Any]) -> TaskState:
        """What the attempt's task becomes if the attempt ends so; changes nothing (the runner stores
        that first, and ends the attempt only once it is stored)."""
        if cause is Cause.RESULT:
            return TaskState.DONE
        if cause is Cause.RETURNED:
            return TaskState.PENDING
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
        del self.running[attempt.task]
        worker = self.workers.get(attempt.worker)
        if worker is not None:
            del worker.held[attempt.task]
            if worker.current is attempt:
                worker.current = None
            if not worker.held:
                self.holding.pop(worker.id, None)
        task = attempt.task
        self.states[task] = next_state
        if cause is not Cause.RETURNED:
            self.suspects.discard(task)
        if next_state is TaskState.DONE:
            self.n_done += 1
            seconds = detail.get("resource_usage", {}).get("seconds")
            self.durations.append(seconds if isinstance(seconds, (int, float)) else now - attempt.started)
            self._samples_since += 1
            return
        if cause is Cause.RETURNED:
            self._returned.append(task)
            return
        if cause is Cause.WALLTIME and detail.get("fits_fresh_worker"):
            self.walltime_retried.add(task)
        else:
            self.failure_counts[task] = self.failure_counts.get(task, 0) + 1
        self.failed_attempts.setdefault(task, []).append(attempt)
        if next_state is TaskState.PENDING:
            self._returned.appendleft(task)
        else:
            self.n_failed += 1
