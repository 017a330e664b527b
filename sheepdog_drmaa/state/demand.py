"""How many workers a sweep needs, which it no longer needs, and which are overdue. Pure.

Functions of the workers' phases and the count of pending tasks, called by :class:`SweepState`.
"""
from __future__ import annotations

from ..model import Cause
from .workers import WorkerPhase, Workers


def workers_to_submit(workers: Workers, pending: int, max_workers: int) -> int:
    """How many new workers the pending tasks need now: one for each that no spare worker (idle,
    or still queued) will take. A spare worker may never come (sent to a dead node, say): it
    does not hold back the others' replacements. A worker told to leave that holds nothing is
    not counted, however long the scheduler takes to see it gone."""
    if not pending:
        return 0
    in_phase = workers.in_phase
    retiring, retiring_holding = WorkerPhase.RETIRING, 0
    for worker in workers.holding.values():
        if worker.phase is retiring:
            retiring_holding += 1
    working = len(in_phase(WorkerPhase.WORKING))
    not_started = len(in_phase(WorkerPhase.SUBMITTED)) + len(in_phase(WorkerPhase.GREETED))
    width = not_started + working + retiring_holding
    spare = not_started + working - (len(workers.holding) - retiring_holding)
    return max(min(pending - spare, max_workers - width), 0)


def surplus(workers: Workers, pending: int) -> list[str]:
    """Once nothing is pending, workers that never started are not needed: mark and return them."""
    if pending:
        return []
    queued = list(workers.in_phase(WorkerPhase.SUBMITTED).values())
    for worker in queued:
        workers.terminate(worker)
    return [w.id for w in queued]


def overdue(workers: Workers, timeout: float | None, heartbeat_timeout: float,
            now: float) -> list[tuple[str, Cause]]:
    """Workers whose running attempt ran past the timeout or that went quiet, with the cause to record."""
    late = []
    for worker_id, worker in workers.holding.items():
        current = worker.current
        if timeout is not None and current is not None and now - current.started > timeout:
            late.append((worker_id, Cause.TIMEOUT))
        elif now - worker.last_seen > heartbeat_timeout:
            late.append((worker_id, Cause.LOST))
    return late
