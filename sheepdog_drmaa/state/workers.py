"""Every live worker of a sweep and its phase. Pure.

A worker moves through the phases of :data:`TRANSITIONS` only; a move not in the table raises
:class:`IllegalTransition`, so a worker cannot be, say, both retiring and terminated. The
indexes the driver asks about (workers not heard from yet, workers greeted but idle, workers
holding tasks) are kept by the same moves, never set beside them.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..model import Attempt


class WorkerPhase(enum.Enum):
    """Where a worker is in its life, as the server sees it."""

    SUBMITTED = "submitted"    # given to the scheduler, not heard from (queued, starting, or lost on the way)
    GREETED = "greeted"        # said hello, has not asked for work yet
    WORKING = "working"        # asked for work; runs what it holds, then asks again
    RETIRING = "retiring"      # told there is no more work (or it cannot load f): exits on its own
    TERMINATED = "terminated"  # we asked the scheduler to remove it; its ending is ours


TRANSITIONS: dict[WorkerPhase, frozenset[WorkerPhase]] = {
    WorkerPhase.SUBMITTED: frozenset({WorkerPhase.GREETED, WorkerPhase.TERMINATED}),
    WorkerPhase.GREETED: frozenset({WorkerPhase.WORKING, WorkerPhase.RETIRING, WorkerPhase.TERMINATED}),
    WorkerPhase.WORKING: frozenset({WorkerPhase.RETIRING, WorkerPhase.TERMINATED}),
    WorkerPhase.RETIRING: frozenset({WorkerPhase.TERMINATED}),
    WorkerPhase.TERMINATED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A worker was moved to a phase its own phase does not lead to: a bug in the caller."""


@dataclass(eq=False)
class Worker:
    """One worker: its phase, the tasks it holds, and what the server has seen of it."""

    id: str
    phase: WorkerPhase = WorkerPhase.SUBMITTED
    started: float | None = None  # when it said hello: its runtime limit counts from about then
    host: str | None = None   # the execution host it said hello from
    process_group: int | None = None  # its process group there, as its hello said
    setup_error: str | None = None  # why it could not load the function, if it could not
    held: dict[int, Attempt] = field(default_factory=dict)  # task -> its attempt, in the order they run
    current: Attempt | None = None  # the held attempt running now, as far as the server knows
    death_named: bool = False  # the worker's parent named the task (now its current) as its process died
    death_peak_rss_kb: int | None = None  # that process's peak, as the parent measured it
    last_seen: float = 0.0
    last_batch: int = 0
    tasks_leased: int = 0
    idle_since: float | None = None  # when it last asked for work and found none (a growing sweep's)
    dispatched: float | None = None  # first seen started by the scheduler, before its hello
    dispatched_to: str | None = None
    went_quiet: bool = False  # removed for silence (no heartbeat, no hello): its host may not answer either

    @property
    def where(self) -> str | None:
        """The host it said hello from, else the one the scheduler sent it to."""
        return self.host or self.dispatched_to

    @property
    def reached(self) -> bool:
        """Whether it ever said hello to the server."""
        return self.started is not None

    @property
    def terminated(self) -> bool:
        return self.phase is WorkerPhase.TERMINATED

    @property
    def retiring(self) -> bool:
        return self.phase is WorkerPhase.RETIRING


class Workers:
    """The workers not yet known to have ended, indexed by phase and by whether they hold tasks."""

    def __init__(self) -> None:
        self.all: dict[str, Worker] = {}
        self._by_phase: dict[WorkerPhase, dict[str, Worker]] = {phase: {} for phase in WorkerPhase}
        self.holding: dict[str, Worker] = {}

    def __len__(self) -> int:
        return len(self.all)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.all.values())

    def get(self, worker_id: str) -> Worker | None:
        return self.all.get(worker_id)

    def quiet_ones(self, worker_ids: Iterable[str]) -> dict[str, str | None]:
        """Of ``worker_ids``, those removed for silence, each with its host where known."""
        known = (self.all.get(worker_id) for worker_id in worker_ids)
        return {worker.id: worker.where for worker in known if worker is not None and worker.went_quiet}

    def in_phase(self, phase: WorkerPhase) -> dict[str, Worker]:
        """The workers in ``phase`` now, by id (a live view: copy it to change phases while iterating)."""
        return self._by_phase[phase]

    def add(self, ids: Iterable[str]) -> None:
        for worker_id in ids:
            worker = Worker(worker_id)
            self.all[worker_id] = self._by_phase[WorkerPhase.SUBMITTED][worker_id] = worker

    def move(self, worker: Worker, phase: WorkerPhase) -> None:
        """Move ``worker`` to ``phase``; raises IllegalTransition if its phase does not lead there."""
        if phase not in TRANSITIONS[worker.phase]:
            raise IllegalTransition(f"worker {worker.id} cannot go from {worker.phase.value} to {phase.value}")
        del self._by_phase[worker.phase][worker.id]
        worker.phase = phase
        self._by_phase[phase][worker.id] = worker

    def terminate(self, worker: Worker) -> bool:
        """Mark a worker ours to remove; False if it already was."""
        if worker.terminated:
            return False
        self.move(worker, WorkerPhase.TERMINATED)
        return True

    def hold(self, worker: Worker, attempt: Attempt) -> None:
        worker.held[attempt.task] = attempt
        self.holding[worker.id] = worker

    def release(self, worker: Worker, attempt: Attempt) -> None:
        """The attempt ended: the worker no longer holds it."""
        del worker.held[attempt.task]
        if worker.current is attempt:
            worker.current = None
        if not worker.held:
            self.holding.pop(worker.id, None)

    def forget(self, worker: Worker) -> None:
        """The worker has ended: nothing more is asked of it, or kept about it."""
        del self.all[worker.id]
        del self._by_phase[worker.phase][worker.id]
        self.holding.pop(worker.id, None)
