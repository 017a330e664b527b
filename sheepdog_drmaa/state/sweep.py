"""One sweep's state: what happens goes in, what to do comes out. Pure: no I/O, no clock, no threads.

The routes (a worker says hello, asks for tasks, reports) and the driver (a worker died or went
quiet; the clock ticks) feed it what happens with the current time, and carry out what it
answers (the endings to store and then apply, the workers to submit, remove or write off, the
hosts to avoid). Not thread-safe: callers hold the run's lock. The parts: :mod:`.tasks` (the
task ledger), :mod:`.workers` (worker phases), :mod:`.health` (can workers start at all),
:mod:`.batches` (lease sizes), :mod:`.endings` (which attempt a worker's end is charged to).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..model import Attempt, AttemptDetail, Cause, Closing, ExitInfo, TaskState
from . import demand, endings
from .batches import BatchPolicy
from .health import StartFailure, StartHealth
from .tasks import TaskLedger
from .workers import Worker, WorkerPhase, Workers

# How often a worker waiting for a growing sweep's tasks asks for them: first, and at the most.
FIRST_IDLE_POLL_SECONDS = 0.05
IDLE_POLL_SECONDS = 2.0

# Causes a worker reports itself, after which it runs the next task of its batch.
REPORTED = frozenset({Cause.RESULT, Cause.EXCEPTION})


@dataclass(frozen=True)
class Overdue:
    """Workers that ran past the timeout or went quiet."""

    closings: list[Closing]  # the endings of their attempts: store, then apply them
    workers: list[str]       # to remove from the scheduler now


@dataclass(frozen=True)
class Tick:
    """What the driver does after a turn of the clock."""

    written_off: list[Worker]     # started but never reached the server, or hung: remove them
    surplus: list[str]            # queued workers no longer needed: remove them
    avoid_hosts: tuple[str, ...]  # hosts no more workers are sent to
    counts: dict[str, int]


class SweepState:
    """Every task's state and every live worker's lease for one sweep."""

    def __init__(self, n_tasks: int, *, retries: int = 3, retry_exceptions: tuple[str, ...] = (),
                 tasks_per_worker: int | None = None, max_workers: int = 1000, timeout: float | None = None,
                 heartbeat_timeout: float = 60.0, start_failure_limit: int = 5, done: Iterable[int] = (),
                 attempts_made: Mapping[int, int] | None = None, walltime: float | None = None,
                 task_time: float | None = None, memory_limit: int | None = None, accepting: bool = False,
                 idle_timeout: float = 60.0) -> None:
        self.max_workers = max_workers
        # A sweep that grows (an Executor's) is not finished while it accepts tasks; its idle workers
        # wait for them, each for up to idle_timeout seconds, instead of exiting.
        self.accepting, self.idle_timeout = accepting, idle_timeout
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.memory_limit = memory_limit  # each worker's memory request in bytes, to tell kills for memory
        self.tasks = TaskLedger(n_tasks, retries=retries, retry_exceptions=retry_exceptions, done=done,
                                attempts_made=attempts_made)
        self.workers = Workers()
        self.health = StartHealth(start_failure_limit=start_failure_limit, heartbeat_timeout=heartbeat_timeout)
        self.batches = BatchPolicy(tasks_per_worker=tasks_per_worker, timeout=timeout, walltime=walltime,
                                   task_time=task_time)

    @property
    def finished(self) -> bool:
        return self.tasks.finished and not self.accepting

    def stop_accepting(self) -> None:
        """No task will be added: the sweep finishes once those it has end, and idle workers exit."""
        self.accepting = False

    @property
    def start_failure(self) -> StartFailure | None:
        return self.health.start_failure

    def counts(self) -> dict[str, int]:
        return self.tasks.counts()

    def add_workers(self, ids: Iterable[str]) -> None:
        self.workers.add(ids)

    def add_tasks(self, n_tasks: int) -> range:
        """Tasks added to the live sweep, pending; returns their indices."""
        return self.tasks.add_tasks(n_tasks)

    # -- what workers say -------------------------------------------------------------------

    def hello(self, worker_id: str, host: str | None = None, now: float = 0.0,
              process_group: int | None = None) -> bool:
        """A worker reached the server. False if it is not one of ours (it is told to exit), and for a
        second process under the id of a worker that already said hello (its job was started again,
        as Slurm requeues a job whose node failed): the first one's tasks end as that one's do."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        if worker.terminated:
            self.health.said_hello(worker, host, now)
            return False
        if worker.phase is WorkerPhase.SUBMITTED:  # a hello repeated because its answer was lost changes nothing
            worker.host, worker.started, worker.process_group = host, now, process_group
            self.workers.move(worker, WorkerPhase.GREETED)
            self.health.said_hello(worker, host, now)
        elif (host, process_group) != (worker.host, worker.process_group):
            return False
        worker.last_seen = now
        return True

    def setup_failed(self, worker_id: str, error: str) -> None:
        """A worker reached the server but could not load the function (a module missing on the node)."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.setup_error = error
            if worker.phase in (WorkerPhase.GREETED, WorkerPhase.WORKING):
                self.workers.move(worker, WorkerPhase.RETIRING)

    def lease(self, worker_id: str, now: float) -> list[Attempt]:
        """The next batch of pending tasks for the worker, in the order it runs them; empty: it should exit."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.phase not in (WorkerPhase.GREETED, WorkerPhase.WORKING):
            return []
        worker.last_seen = now
        if worker.phase is WorkerPhase.GREETED:
            self.workers.move(worker, WorkerPhase.WORKING)
        if worker.held:  # it reported all it had: what it still holds is a lease whose answer it lost
            return list(worker.held.values())
        self.health.got_going()
        size = self.batches.size(worker, self.tasks.n_pending, len(self.workers), now)
        if not size:
            if not self._waits_for_work(worker, now):
                self.workers.move(worker, WorkerPhase.RETIRING)
            return []
        worker.idle_since = None
        batch = self._take_batch(worker, size, now)
        worker.current = batch[0]  # it starts the first at once
        worker.tasks_leased += size
        worker.last_batch = size
        return batch

    def _waits_for_work(self, worker: Worker, now: float) -> bool:
        """Whether a worker given nothing waits for tasks to come (a growing sweep's, idle for less
        than idle_timeout) rather than exit."""
        if not self.accepting or self.tasks.n_pending or worker.held:
            return False
        if worker.idle_since is None:
            worker.idle_since = now
        return now - worker.idle_since < self.idle_timeout

    def idle_poll(self, worker_id: str, now: float) -> float | None:
        """Seconds after which a worker given nothing asks again (it waits for work); None: it exits.
        Soon at first (submissions come in bursts), then more rarely, up to IDLE_POLL_SECONDS."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.phase is not WorkerPhase.WORKING or worker.idle_since is None:
            return None
        return min(max((now - worker.idle_since) / 10, FIRST_IDLE_POLL_SECONDS), IDLE_POLL_SECONDS)

    def withdraw(self, task: int) -> bool:
        """Take back a pending task before it runs (its future was cancelled); False if it is not pending."""
        return self.tasks.withdraw(task)

    def _take_batch(self, worker: Worker, size: int, now: float) -> list[Attempt]:
        """Up to ``size`` pending tasks, opened as attempts held by ``worker``; a suspect goes alone."""
        batch: list[Attempt] = []
        for _ in range(size):
            task = self.tasks.take_pending()
            suspect = task in self.tasks.suspects
            if suspect and batch:  # put it back for the next lease
                self.tasks.put_back(task)
                break
            attempt = self.tasks.open_attempt(task, worker.id, worker.host, now)
            self.workers.hold(worker, attempt)
            batch.append(attempt)
            if suspect:
                break
        return batch

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

    def task_died(self, worker_id: str, task: int, number: int, peak_rss_kb: int | None) -> None:
        """The worker's own word, as its task process died, of which task that was (and what it measured)."""
        attempt = self.current(worker_id, task, number)
        if attempt is not None:
            worker = self.workers.all[worker_id]
            worker.current = attempt
            # Only a death with its measurement settles which task ran (as before the record was typed).
            worker.death_named, worker.death_peak_rss_kb = peak_rss_kb is not None, peak_rss_kb

    def report(self, worker_id: str, task: int, number: int, cause: Cause, now: float,
               detail: AttemptDetail) -> Closing | None:
        """A worker reported a result or an exception: its ending, to store and then apply. None if
        the attempt was superseded."""
        attempt = self.current(worker_id, task, number)
        if attempt is None:
            return None
        self.workers.all[worker_id].last_seen = now
        return self.tasks.closing(attempt, cause, now, detail)

    def current(self, worker_id: str, task: int, number: int) -> Attempt | None:
        """The worker's held attempt of ``task`` if it is attempt ``number``; else None (superseded)."""
        worker = self.workers.get(worker_id)
        attempt = worker.held.get(task) if worker is not None else None
        if attempt is None or attempt.number != number:
            return None
        return attempt

    def closing(self, attempt: Attempt, cause: Cause, now: float, detail: AttemptDetail) -> Closing:
        """The attempt's ending as decided; nothing changes until it is applied."""
        return self.tasks.closing(attempt, cause, now, detail)

    def apply(self, closings: Iterable[Closing]) -> None:
        """Carry out decided endings, once stored: workers let go of the attempts, tasks move on, a
        success's duration is learnt, and a worker whose reported task ended runs its next."""
        for closing in closings:
            attempt = closing.attempt
            worker = self.workers.get(attempt.worker)
            if worker is not None:
                self.workers.release(worker, attempt)
                if closing.cause in REPORTED and worker.current is None and worker.held:
                    worker.current = next(iter(worker.held.values()))
                    worker.current.started = max(worker.current.started, closing.ended)
            self.tasks.close(closing)
            if closing.outcome is TaskState.DONE:
                seconds = closing.detail.seconds
                self.batches.task_finished(closing.ended - attempt.started if seconds is None else seconds)

    # -- what the scheduler says, and the clock ----------------------------------------------

    def worker_ended(self, info: ExitInfo, now: float, stderr_tail: str = "") -> list[Closing]:
        """The scheduler says a worker is gone: the endings of whatever attempts it still held.

        ``stderr_tail``: the end of the worker's stderr file, where a scheduler may say it killed
        the worker for memory."""
        return endings.worker_ended(self, info, now, stderr_tail)

    def overdue(self, now: float) -> list[tuple[str, Cause]]:
        """Workers whose running attempt ran past the timeout or that went quiet, with the cause to record."""
        return demand.overdue(self.workers, self.timeout, self.heartbeat_timeout, now)

    def expire(self, worker_id: str, cause: Cause, now: float) -> list[Closing]:
        """The endings of a worker's attempts on our own decision (lost, timeout); its job is to be removed."""
        return endings.expire(self, self.workers.all[worker_id], cause, now)

    def unresponsive(self, started: Mapping[str, str | None], now: float) -> list[Worker]:
        """Workers started (or greeted) too long ago without a word: terminated and returned."""
        return self.health.unresponsive(self.workers, started, now)

    def surplus_workers(self) -> list[str]:
        """Once nothing is pending, workers that never started are not needed: mark and return them."""
        return demand.surplus(self.workers, self.tasks.n_pending)

    def workers_to_submit(self) -> int:
        """How many new workers the pending tasks need now (see :func:`.demand.workers_to_submit`)."""
        return demand.workers_to_submit(self.workers, self.tasks.n_pending, self.max_workers)

    def expire_overdue(self, now: float) -> Overdue:
        """A turn of the clock, first part: the endings of overdue workers' attempts, and those
        workers, to remove. Store and apply the endings before :meth:`tick`, which counts their tasks."""
        overdue = self.overdue(now)
        closings = [closing for worker, cause in overdue for closing in self.expire(worker, cause, now)]
        return Overdue(closings, [worker for worker, _ in overdue])

    def tick(self, started: Mapping[str, str | None], now: float) -> Tick:
        """A turn of the clock, second part: write off silent workers, drop surplus queued ones."""
        written_off = self.unresponsive(started, now)
        return Tick(written_off, self.surplus_workers(), tuple(sorted(self.health.silent_hosts)), self.counts())

    def cancel(self, now: float) -> list[Closing]:
        """Every held attempt, to end as cancelled (the tasks stay unfinished); no worker gets more work."""
        self.terminate_all()
        return self.tasks.cancel(now)

    def terminate_all(self) -> list[str]:
        """Every worker not known to have ended, marked ours to remove; returns their ids."""
        for worker in self.workers:
            self.workers.terminate(worker)
        return list(self.workers.all)
