"""What the dashboard and the report show of a sweep, read from the store (never written): typed
views, built from the sweep's record and every recorded attempt."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .. import claims
from ..model import AttemptRecord, Cause, SweepPhase, SweepRecord, counts_by_name
from ..options import from_stored
from ..store import Store

STDERR_TAIL_LINES = 20
TIMELINE_SEGMENTS = 2000  # the most recent attempts drawn on the worker timeline
EXAMPLES_PER_CAUSE = 20   # failed attempts listed under each cause


@dataclass(frozen=True)
class SweepRow:
    """One line of the sweeps list."""

    id: str
    name: str | None
    state: str              # as status shows it: a sweep nobody drives is interrupted
    driver_gone: bool
    tasks: int
    counts: dict[str, int]  # done, failed, running, queued
    age_seconds: float
    owner: str | None       # pid@host of the process driving it

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class HostRow:
    """What happened on one execution host."""

    host: str
    attempts: int
    done: int
    failures_by_cause: dict[str, int]
    lost_workers: int  # workers whose tasks ended lost (no heartbeat) or with their node


@dataclass(frozen=True)
class FailedAttempt:
    task: int
    number: int
    host: str | None
    summary: str
    traceback: str
    stderr_tail: str


@dataclass(frozen=True)
class FailureGroup:
    """Failed attempts of one cause, the most recent first (at most EXAMPLES_PER_CAUSE of them)."""

    cause: str
    count: int
    examples: list[FailedAttempt]


@dataclass(frozen=True)
class Segment:
    """One attempt on the worker timeline."""

    worker: str
    task: int
    start: float
    end: float | None  # None: still running
    cause: str | None


@dataclass(frozen=True)
class SweepView:
    """Everything the sweep page shows."""

    row: SweepRow
    memory_asked: int | None          # memory= per worker, in bytes, if it was asked
    completions: list[float]          # when each task ended done, in order
    eta_seconds: float | None
    hosts: list[HostRow]
    failures: list[FailureGroup]
    durations: list[float]            # seconds of each attempt that returned a result
    peaks_kb: list[int]               # the peak memory of each attempt that measured one
    timeline: list[Segment] = field(default_factory=list)


def sweep_rows(store: Store, now: float | None = None) -> list[SweepRow]:
    """Every sweep in the store, oldest first."""
    now = time.time() if now is None else now
    return [_row(store, record, now) for record in store.sweeps()]


def _row(store: Store, record: SweepRecord, now: float) -> SweepRow:
    gone = claims.driver_gone(record)
    owner = f"{record.owner.pid}@{record.owner.host}" if record.owner else None
    return SweepRow(id=record.id, name=record.name, state=SweepPhase.INTERRUPTED.value if gone else record.state,
                    driver_gone=gone, tasks=record.n_tasks, counts=counts_by_name(store.counts(record.id)),
                    age_seconds=now - record.created, owner=owner)


def find(store: Store, name: str) -> SweepRecord | None:
    """A sweep by its name or id."""
    return store.sweep_named(name) or store.sweep(name)


def sweep_view(store: Store, record: SweepRecord, now: float | None = None) -> SweepView:
    """The sweep page's view of ``record``, from its attempts as stored now."""
    now = time.time() if now is None else now
    row = _row(store, record, now)
    attempts = store.attempts(record.id)
    completions = sorted(a.ended for a in attempts if a.cause == "result" and a.ended is not None)
    return SweepView(row=row, memory_asked=_memory_asked(record), completions=completions,
                     eta_seconds=_eta(completions, row, now), hosts=_hosts(attempts), failures=_failures(attempts),
                     durations=[_seconds(a) for a in attempts if a.cause == "result" and a.ended is not None],
                     peaks_kb=[peak for peak in map(_peak_kb, attempts) if peak],
                     timeline=[Segment(a.worker, a.task, a.started, a.ended, a.cause)
                               for a in sorted(attempts, key=lambda a: a.started)[-TIMELINE_SEGMENTS:]])


def _memory_asked(record: SweepRecord) -> int | None:
    if record.launch is None or not record.launch.options:
        return None
    return from_stored(record.launch.options).memory


def _eta(completions: list[float], row: SweepRow, now: float) -> float | None:
    """Seconds until every task is done at the rate of the last tenth of those done (at least 5)."""
    left = row.counts["queued"] + row.counts["running"]
    if not left or row.state != SweepPhase.RUNNING.value or len(completions) < 2:
        return None
    recent = completions[-max(len(completions) // 10, 5):]
    span = max(now - recent[0], 1e-3)
    return left / (len(recent) / span)


def _seconds(attempt: AttemptRecord) -> float:
    measured = (attempt.detail.get("resource_usage") or {}).get("seconds")
    if isinstance(measured, (int, float)):
        return float(measured)
    return (attempt.ended or attempt.started) - attempt.started


def _peak_kb(attempt: AttemptRecord) -> int | None:
    """The attempt's peak resident memory, as its worker measured it (or named it as it died)."""
    usage = attempt.detail.get("resource_usage") or {}
    for value in (attempt.detail.get("peak_rss_kb"), usage.get("max_rss_kb")):
        if isinstance(value, int) and value > 0:
            return value
    return None


LOST_CAUSES = frozenset({Cause.LOST.value, Cause.ABORTED.value})  # gone with a node, or taken by the scheduler
NOT_FAILURES = frozenset({None, Cause.RESULT.value, Cause.RETURNED.value, Cause.CANCELLED.value})


def _hosts(attempts: list[AttemptRecord]) -> list[HostRow]:
    by_host: dict[str, list[AttemptRecord]] = defaultdict(list)
    for attempt in attempts:
        by_host[attempt.host or "(not started)"].append(attempt)
    rows = []
    for host, held in sorted(by_host.items()):
        failures = Counter(a.cause for a in held if a.cause not in NOT_FAILURES)
        lost = len({a.worker for a in held if a.cause in LOST_CAUSES})
        rows.append(HostRow(host=host, attempts=len(held), done=sum(a.cause == "result" for a in held),
                            failures_by_cause={str(k): v for k, v in sorted(failures.items())}, lost_workers=lost))
    return rows


def _failures(attempts: list[AttemptRecord]) -> list[FailureGroup]:
    by_cause: dict[str, list[AttemptRecord]] = defaultdict(list)
    for attempt in attempts:
        if attempt.cause is not None and attempt.cause not in NOT_FAILURES:
            by_cause[attempt.cause].append(attempt)
    groups = []
    for cause, failed in sorted(by_cause.items(), key=lambda item: -len(item[1])):
        latest = sorted(failed, key=lambda a: a.ended or a.started, reverse=True)[:EXAMPLES_PER_CAUSE]
        groups.append(FailureGroup(cause, len(failed), [
            FailedAttempt(task=a.task, number=a.number, host=a.host, summary=str(a.detail.get("summary") or cause),
                          traceback=str(a.detail.get("traceback") or ""),
                          stderr_tail="\n".join(a.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:]))
            for a in latest]))
    return groups
