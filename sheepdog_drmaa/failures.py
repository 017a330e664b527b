"""How an attempt ended: the causes, and the table that turns scheduler exit information into one.

Pure: backends translate their own records into :class:`ExitInfo`; everything else reads
:class:`Cause`. Which causes are retried is decided here too, so there is one place to look.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from .protocol import EXIT_BAD_CONFIGURATION, EXIT_RESERVED_STATUS, EXIT_SERVER_UNREACHABLE


class Cause(str, enum.Enum):
    """The one way each task attempt ended."""

    RESULT = "result"          # f returned and the result arrived
    EXCEPTION = "exception"    # f raised; type, message and remote traceback kept
    EXIT = "exit"              # the worker exited with a status without reporting
    SIGNAL = "signal"          # the worker was killed by a signal
    ABORTED = "aborted"        # the scheduler aborted or deleted the job
    LOST = "lost"              # no heartbeat while the scheduler still said running
    TIMEOUT = "timeout"        # ran past the user's timeout
    CANCELLED = "cancelled"    # the sweep was cancelled while the attempt ran
    WALLTIME = "walltime"      # the worker reached its runtime limit and the scheduler ended it
    RETURNED = "returned"      # held unstarted (or unreported) in a batch when its worker ended: not counted


# Causes that are the cluster's fault rather than f's: retried within the retry budget.
INFRASTRUCTURE_CAUSES = frozenset({Cause.EXIT, Cause.SIGNAL, Cause.ABORTED, Cause.LOST, Cause.TIMEOUT,
                                   Cause.WALLTIME})


@dataclass(frozen=True)
class ExitInfo:
    """What the scheduler says about one finished worker, in backend-neutral form."""

    worker: str
    exited: bool = False
    exit_status: int | None = None
    signaled: bool = False
    signal: str = ""
    core_dumped: bool = False
    aborted: bool = False
    resource_usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ending:
    """A classified worker ending: the cause and a human sentence saying what happened."""

    cause: Cause
    summary: str
    clean: bool  # the worker ended on its own terms (exit 0), which is no failure by itself


def _aborted(info: ExitInfo) -> Ending:
    return Ending(Cause.ABORTED, "the scheduler aborted or deleted the job before it finished", False)


def _signaled(info: ExitInfo) -> Ending:
    core = " (core dumped)" if info.core_dumped else ""
    return Ending(Cause.SIGNAL, f"the worker was killed by {info.signal or 'a signal'}{core}", False)


# Statuses the worker itself uses, explained (see protocol).
_WORKER_STATUSES = {
    EXIT_RESERVED_STATUS: (" (the task exited with 99 or 100, which Grid Engine reserves; the worker passed it "
                           "on as 98)"),
    EXIT_SERVER_UNREACHABLE: " (the worker could not reach the sheepdog server; see its stderr file)",
    EXIT_BAD_CONFIGURATION: " (the worker could not load its configuration or the function; see its stderr file)",
    127: " (command not found: check python=)",
}


def _exited(info: ExitInfo) -> Ending:
    if info.exit_status == 0:
        return Ending(Cause.EXIT, "the worker exited with status 0 without reporting", True)
    note = _WORKER_STATUSES.get(info.exit_status or 0, "")
    return Ending(Cause.EXIT, f"the worker exited with status {info.exit_status}{note}", False)


def _unknown(info: ExitInfo) -> Ending:
    return Ending(Cause.ABORTED, "the job ended without an exit status or signal", False)


# Checked in order; the first predicate that holds decides. Aborted comes first because Grid
# Engine may also report an exit status for a job it deleted.
_TABLE: list[tuple[Callable[[ExitInfo], bool], Callable[[ExitInfo], Ending]]] = [
    (lambda info: info.aborted, _aborted),
    (lambda info: info.signaled, _signaled),
    (lambda info: info.exited and info.exit_status is not None, _exited),
    (lambda info: True, _unknown),
]


def classify(info: ExitInfo) -> Ending:
    """Turn a worker's exit information into the cause of whatever attempt it still held."""
    for applies, ending in _TABLE:
        if applies(info):
            return ending(info)
    raise AssertionError("the last row of the table always applies")


def is_retryable(cause: Cause, exception_types: tuple[str, ...] = (), retry_exceptions: tuple[str, ...] = ()) -> bool:
    """Whether an attempt that ended in ``cause`` may be tried again (budget permitting).

    ``exception_types`` are the qualified names of the raised exception's classes (its MRO), and
    ``retry_exceptions`` the qualified names the user asked to retry.
    """
    if cause in INFRASTRUCTURE_CAUSES:
        return True
    if cause is Cause.EXCEPTION:
        return any(name in retry_exceptions for name in exception_types)
    return False
