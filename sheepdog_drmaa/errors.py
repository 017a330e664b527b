"""Exception classes raised by sheepdog_drmaa."""
from __future__ import annotations

from typing import Any


class SheepdogError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(SheepdogError, ValueError):
    """An option or input is wrong; raised before anything is submitted."""


class BackendUnavailable(SheepdogError):
    """The requested scheduler backend cannot be used on this machine."""


class SchedulerOutage(BackendUnavailable):
    """The scheduler stayed unreachable for longer than ``outage_wait``: its library works, but it does not answer."""


class SchedulerUnreachable(SheepdogError):
    """The scheduler cannot be reached for now (qmaster restarting, say); worth trying again later."""


class SubmissionRefused(SheepdogError):
    """The scheduler refused the workers' job: an unknown queue or resource, a bad native option."""


class WorkersCannotStart(SheepdogError):
    """Workers keep dying before they reach the server, so the sweep cannot make progress."""


class StoreError(SheepdogError):
    """The sweep store cannot be opened, read or written (missing, damaged, locked too long)."""


class StoreTooLarge(StoreError):
    """A value (a result, most often) is larger than the store can hold."""


class ResultTooLarge(SheepdogError):
    """A task's result is larger than ``max_result_size``; raised on the node, reported as the task's failure."""


class SweepIncomplete(SheepdogError):
    """Results were asked of a sweep in which some tasks are neither done nor failed."""


class SweepLocked(SheepdogError):
    """Another live client is running a sweep of the same name."""


class SweepMismatch(SheepdogError):
    """A named sweep exists with different arguments or a different function."""


class SweepCancelled(SheepdogError):
    """The sweep was cancelled before every task finished."""


class SweepInterrupted(SheepdogError):
    """The client stopped driving the sweep before every task finished (its interpreter exited, say);
    the sweep is recorded as interrupted, and a named one resumes."""


class SweepFailed(SheepdogError):
    """Some tasks failed for good; ``.failures`` and ``.results`` keep everything that is known."""

    def __init__(self, message: str, failures: list[Any], results: list[Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


class DriverFailed(SheepdogError):
    """The process started to drive a detached or resumed sweep stopped before it took the sweep
    on; its log (quoted in the message) says why. The sweep is left as it was, resumable."""


class TaskFailed(SheepdogError):
    """An Executor's call that the cluster broke (killed, lost, out of time ...) once its retries
    were spent; ``.failure`` is its record: cause, attempts, host, the end of its stderr."""

    def __init__(self, message: str, failure: Any) -> None:
        super().__init__(message)
        self.failure = failure
