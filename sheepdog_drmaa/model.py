"""The bottom layer: the states, causes and records every other module speaks in.

Imports nothing from the package, so that any module may import it. Enums are ``(str, Enum)``
stored as their text.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

EMPTY_OUTPUT: Mapping[str, str] = MappingProxyType({})  # no output kept: shared, so read-only


class TaskState(str, enum.Enum):
    """A task's state, as stored."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # withdrawn before it ran (a cancelled future): never run, not counted


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
    MEMORY = "memory"          # the scheduler killed the worker for using more memory than it asked for
    RETURNED = "returned"      # held unstarted (or unreported) in a batch when its worker ended: not counted


# Causes that are the cluster's fault rather than f's: retried within the retry budget.
INFRASTRUCTURE_CAUSES = frozenset({Cause.EXIT, Cause.SIGNAL, Cause.ABORTED, Cause.LOST, Cause.TIMEOUT,
                                   Cause.WALLTIME, Cause.MEMORY})


class AttemptDetail(NamedTuple):
    """What is known of how an attempt ended, beyond its cause. Stored as JSON with only the fields
    known (:meth:`to_json`); what decides a retry is here, typed: the exception's classes, and
    whether a task ended at its worker's runtime limit would fit a fresh worker."""

    summary: str | None = None  # one sentence a person reads; none for a result
    resource_usage: Mapping[str, Any] | None = None  # the worker's or the scheduler's measurements
    exception_types: tuple[str, ...] | None = None  # qualified names along the class's MRO, if f raised
    traceback: str | None = None
    exit_status: int | None = None  # the scheduler's word on the worker's end, when it ended them
    signal: str | None = None
    core_dumped: bool | None = None
    peak_rss_kb: int | None = None  # the task process's peak, named by its worker as it died
    fits_fresh_worker: bool | None = None  # ended at the worker's runtime limit, and would fit a fresh one

    def to_json(self) -> dict[str, Any]:
        """The stored form: the known fields only; and a scheduler's ending (it always says the
        signal, "" for none) says its exit status, none included."""
        return {name: value for name, value in zip(self._fields, self)
                if value is not None or (name == "exit_status" and self.signal is not None)}

    @property
    def seconds(self) -> float | None:
        """How long the task ran, as the worker measured it."""
        seconds = (self.resource_usage or {}).get("seconds")
        return seconds if isinstance(seconds, (int, float)) else None


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
    detail: AttemptDetail = AttemptDetail()


class Closing(NamedTuple):
    """An attempt's ending as decided, not yet done: stored first, then applied, then announced.
    (A named tuple: immutable, and made once per task, so as cheap to make as a tuple.)"""

    attempt: Attempt
    cause: Cause
    ended: float
    detail: AttemptDetail
    outcome: TaskState   # what its task becomes
    suspect: bool = False  # went back not knowing whether it killed its worker: it is tried alone next
    result: bytes | None = None
    error: bytes | None = None  # the pickled exception f raised
    output: Mapping[str, str] = EMPTY_OUTPUT


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
    state: str = ""  # the scheduler's own word for how the job ended, where it has one (Slurm: OUT_OF_MEMORY)


@dataclass(frozen=True)
class Ending:
    """A classified worker ending: the cause and a human sentence saying what happened."""

    cause: Cause
    summary: str
    clean: bool  # the worker ended on its own terms (exit 0), which is no failure by itself


@dataclass(frozen=True)
class Claim:
    """The client process that runs a sweep, as recorded in the store."""

    pid: int
    host: str
    started: str | None   # the process's start time in clock ticks since boot (Linux), if known
    token: str | None     # None in claims written by sheepdog_drmaa 0.1.0
    seen: float              # when the client last refreshed the claim

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


class Launch(NamedTuple):
    """Everything a driver needs to run a stored sweep, beside its function and arguments: the
    resolved options (by name), and the workers' environment and working directory as the
    caller had them. With it, a sweep is driven by a process of its own (detached) or resumed
    from the store alone, without the user's script."""

    options: dict[str, Any]
    environment: dict[str, str]
    working_directory: str
    source_file: str | None  # where f was defined, to name its frames in remote tracebacks
    scheduler_environment: dict[str, str] = {}  # the scheduler's settings, for a driver process (never changed)

    def to_json(self) -> str:
        return json.dumps(self._asdict())

    @classmethod
    def from_json(cls, text: str) -> Launch:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class SweepRecord:
    id: str
    name: str | None
    created: float
    updated: float
    n_tasks: int
    state: str
    function_digest: str
    args_digest: str
    options: dict[str, Any]
    owner: Claim | None
    launch: Launch | None = None  # None: stored by an earlier version, or run with a Backend object


@dataclass(frozen=True)
class AttemptRecord:
    task: int
    number: int
    worker: str
    host: str | None
    started: float
    ended: float | None
    cause: str | None
    detail: dict[str, Any]
    stdout: str = ""  # what the task printed, head and tail (when the worker lived to report it)
    stderr: str = ""


@dataclass(frozen=True)
class Lease:
    """An attempt as it is opened: which task, which try, given to which worker."""

    task: int
    number: int
    worker: str
    host: str | None
    started: float


@dataclass(frozen=True)
class AttemptEnd:
    """An attempt as it is closed, with what its task becomes."""

    task: int
    number: int
    cause: str
    ended: float
    detail: dict[str, Any]
    task_state: str
    result: bytes | None = None
    error: bytes | None = None
    output: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NewSweep:
    """What a new sweep is stored with; its tasks come separately, as a stream of pickled arguments."""

    id: str
    name: str | None
    function: bytes
    function_digest: str
    args_digest: str
    n_tasks: int
    options: dict[str, Any]
    launch: Launch | None = None
