"""Which attempt a worker's end is charged to, and what becomes of the others it held. Pure.

Endings are decided here and applied only once stored (:meth:`.sweep.SweepState.apply`). When a
worker ends holding a batch, only the attempt it was running is charged with the ending;
the rest go back to the queue uncounted. When which one ran is not known, every held task goes
back uncounted, each to be tried alone next (a suspect): the one that kills its worker is then
charged on its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..failures import classify
from ..model import Attempt, AttemptDetail, Cause, Closing, ExitInfo
from .workers import Worker

if TYPE_CHECKING:  # the sweep passes itself in; this module only reads its parts
    from .sweep import SweepState


def worker_ended(state: SweepState, info: ExitInfo, now: float, stderr_tail: str) -> list[Closing]:
    """The scheduler says a worker is gone: the endings of what it held, or an early death counted."""
    worker = state.workers.get(info.worker)
    if worker is None:
        return []
    ending = classify(info, state.memory_limit, stderr_tail)
    charged = None if worker.terminated else _charged(worker)
    if charged is None:
        state.workers.forget(worker)
        # Ended before running a task, by a failure or (never having reached the server) at all.
        if not worker.terminated and worker.tasks_leased == 0 and not (ending.clean and worker.reached):
            state.health.died_early(info.worker, ending, worker.setup_error)
        return []
    why = f"its worker ended ({ending.summary})"
    if not _certain(worker):
        ended = _return_held(state, worker, now, why)
    else:
        detail = AttemptDetail(summary=ending.summary, exit_status=info.exit_status, signal=info.signal,
                               core_dumped=info.core_dumped, resource_usage=dict(info.resource_usage),
                               peak_rss_kb=worker.death_peak_rss_kb)
        cause = ending.cause
        if state.batches.at_its_limit(worker, now):
            cause = Cause.WALLTIME
            summary, fits = state.batches.walltime_ending(worker, charged, ending.summary,
                                                          charged.task in state.tasks.walltime_retried)
            detail = detail._replace(summary=summary, fits_fresh_worker=fits)
        ended = _end_held(state, worker, charged, cause, now, detail, why)
    state.workers.forget(worker)
    return ended


def expire(state: SweepState, worker: Worker, cause: Cause, now: float) -> list[Closing]:
    """The endings of a worker's attempts on our own decision (lost, timeout); its job is to be removed."""
    state.workers.terminate(worker)
    worker.went_quiet = cause is Cause.LOST
    charged = _charged(worker)
    if charged is None:
        return []
    if cause is Cause.LOST and not _certain(worker):
        return _return_held(state, worker, now, "its worker went quiet")
    if cause is Cause.TIMEOUT:
        summary = f"the task ran longer than the timeout of {state.timeout:g} s; its job was terminated"
        why = "its worker was terminated for another task's timeout"
    else:
        summary = (f"no sign of life from its worker for {now - worker.last_seen:.1f} s while the scheduler "
                   "still reported the job running; its job was terminated")
        why = "its worker went quiet"
    return _end_held(state, worker, charged, cause, now, AttemptDetail(summary=summary), why)


def _charged(worker: Worker) -> Attempt | None:
    """The held attempt an ending is charged to: the one running, as far as the server knows."""
    if worker.current is not None and worker.current.task in worker.held:
        return worker.current
    return next(iter(worker.held.values()), None)


def _certain(worker: Worker) -> bool:
    """Whether the server knows which held task a whole worker's death ended: the only one it
    held, or the one the worker's parent named as its task process died. Otherwise the task
    running might be any not reported yet (the worker moves on without telling)."""
    return len(worker.held) == 1 or worker.death_named


def _return_held(state: SweepState, worker: Worker, now: float, why: str) -> list[Closing]:
    """Every held attempt back uncounted, its task to be tried alone next."""
    held = list(worker.held.values())
    summary = (f"{why} while it held {len(held)} tasks of a batch, and which one ran is not known: each goes "
               "back uncounted, to be tried alone")
    detail = AttemptDetail(summary=summary)
    return [state.tasks.closing(attempt, Cause.RETURNED, now, detail, suspect=True) for attempt in held]


def _end_held(state: SweepState, worker: Worker, charged: Attempt, cause: Cause, now: float,
              detail: AttemptDetail, why: str) -> list[Closing]:
    """The charged attempt ends with ``cause``; the worker's other held attempts go back uncounted."""
    summary = (f"{why} while it held this task in its batch, not running it; back in the queue, not counted "
               "against retries")
    others = [state.tasks.closing(attempt, Cause.RETURNED, now, AttemptDetail(summary=summary))
              for attempt in worker.held.values() if attempt is not charged]
    return [state.tasks.closing(charged, cause, now, detail), *others]
