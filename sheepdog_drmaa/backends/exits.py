"""Exit collection for the DRMAA backend: the scheduler's word on ended workers, turned into ExitInfo.

How the end of a worker is learnt depends on the scheduler. Grid Engine's qmaster pushes job
ends to the library, so ``wait(ANY)`` is a local call, polled every 20 ms; workers whose end it
never reports (lost during a qmaster outage) are looked for with ``jobStatus`` every minute. On
Slurm every ``wait(ANY)`` asks the controller about each unreaped job (1.6 s with 1,000 jobs), so
instead one ``squeue`` lists the sweep's arrays per poll, every 0.5 s backing off to 4 s while
nothing changes, and only the tasks it shows ended are waited for, each by its own id. That listing
runs in the background and is read on a later turn: while slurmctld is down, squeue takes 18 s to
fail, and the driver must go on deciding meanwhile (writing off silent workers, say). Without
squeue on the PATH, DRMAA is asked per task instead, on the driver's thread.

This module does not import ``drmaa``: :mod:`.drmaa` hands the collector the drmaa module and the
process's one session, and every call goes under that session's lock. Several backends in one
process share the session: an end that ``wait(ANY)`` hands to the wrong one is passed on to its
owner's mailbox.
"""
from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import ExitInfo
from .commands import Background
from .schedulers import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExitTimings:
    """How often the scheduler is asked about ended workers (seconds)."""

    poll: float = 0.02  # wait(ANY) where it is cheap (Grid Engine)
    # Listing a sweep's jobs (Slurm, or any scheduler whose wait(ANY) is not cheap): first soon after
    # a change, then less often while nothing ends. Every ended job is collected well within Slurm's
    # MinJobAge (300 s by default), after which slurm-drmaa would make up its exit information.
    list_min: float = 0.5
    list_max: float = 4.0
    list_timeout: float = 30.0  # a listing that hangs is given up
    # How often to look for workers whose end wait() never reported (lost during a qmaster outage).
    reconcile: float = 60.0
    reconcile_after_error: float = 5.0


class Unreaped:
    """The workers submitted and not yet reported ended, by array job."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.by_array: dict[str, set[str]] = {}  # array job id -> its task ids not yet reported ended

    def __bool__(self) -> bool:
        return bool(self.by_array)

    def add(self, worker_ids: Iterable[str]) -> None:
        for worker_id in worker_ids:
            self.by_array.setdefault(self.scheduler.array_of(worker_id), set()).add(worker_id)

    def discard(self, worker_id: str) -> None:
        job = self.scheduler.array_of(worker_id)
        tasks = self.by_array.get(job)
        if tasks is not None:
            tasks.discard(worker_id)
            if not tasks:
                del self.by_array[job]

    def __contains__(self, worker_id: object) -> bool:
        return isinstance(worker_id, str) and worker_id in self.by_array.get(self.scheduler.array_of(worker_id), ())

    def workers(self) -> list[str]:
        return [worker_id for tasks in self.by_array.values() for worker_id in tasks]

    def arrays(self) -> list[str]:
        return sorted(self.by_array)

    def removal_targets(self, worker_ids: Sequence[str]) -> list[str]:
        """What to remove for these workers: each array job whose every remaining task goes, then the
        other workers one by one."""
        requested = set(worker_ids)
        targets = []
        for job, tasks in self.by_array.items():
            if tasks and tasks <= requested:
                targets.append(job)
                requested -= tasks
        targets.extend(sorted(requested))
        return targets


class JobNames:
    """Plain DRMAA (no arrays): the name each worker was told, and the DRMAA job id it was given."""

    def __init__(self) -> None:
        self._job_of: dict[str, str] = {}
        self._name_of: dict[str, str] = {}

    def add(self, name: str, job: str) -> None:
        self._job_of[name], self._name_of[job] = job, name

    def job(self, worker_or_array: str) -> str:
        """The DRMAA id to ask about a worker or an array job."""
        return self._job_of.get(worker_or_array, worker_or_array)

    def name(self, job: str) -> str:
        return self._name_of.get(job, job)

    def forget(self, worker_id: str) -> None:
        self._name_of.pop(self._job_of.pop(worker_id, ""), None)


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


class ExitCollector:
    """One backend's ended workers: asks the scheduler at its pace, keeps what it learnt in a mailbox."""

    def __init__(self, drmaa: Any, session: Any, scheduler: Scheduler, lock: threading.RLock,
                 owners: dict[str, ExitCollector], names: JobNames, timings: ExitTimings = ExitTimings()) -> None:
        """``owners``: shared by every backend of the process, which collector each submitted worker's
        end goes to; ``names``: the backend's plain-DRMAA job names."""
        self.drmaa = drmaa
        self.session = session
        self.scheduler = scheduler
        self.lock = lock
        self.owners = owners
        self.names = names
        self.timings = timings
        self.mailbox: collections.deque[ExitInfo] = collections.deque()
        self.unreaped = Unreaped(scheduler)
        self.saw_outage = False  # the scheduler could not be reached for exit information at some point
        self._next_reconcile = time.monotonic() + timings.reconcile
        self._next_listing = 0.0
        self._listing_interval = timings.list_min
        self._lister = Background(timings.list_timeout, with_errors=True)
        self._listed: set[str] = set()  # the workers unreaped when the running listing started
        self._soon = False  # a change since the running listing started: the next one comes soon
        self._listing_failed = False  # the last listing failed (said at WARNING once per run of failures)

    def track(self, worker_ids: Sequence[str]) -> None:
        """Workers just submitted: their ends are this collector's, and a listing comes soon."""
        with self.lock:
            for worker_id in worker_ids:
                self.owners[worker_id] = self
        self.unreaped.add(worker_ids)
        self.list_soon()

    def list_soon(self) -> None:
        self._listing_interval = self.timings.list_min
        self._soon = True
        self._next_listing = min(self._next_listing, time.monotonic() + self.timings.list_min)

    def wait_any(self, timeout: float) -> ExitInfo | None:
        """The exit information of one ended worker, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.mailbox:
                mailed = self.mailbox.popleft()
                self.unreaped.discard(mailed.worker)  # an end passed on by another backend's wait(ANY) too
                return mailed
            with self.lock:
                if self.mailbox:
                    continue
                now = time.monotonic()
                if not self.scheduler.cheap_wait_any:
                    if self._listing_turn(now):
                        continue
                elif now >= self._next_reconcile:
                    self._reconcile()
                    continue
                else:
                    info = self._wait_once()
                    if info is not None:
                        if self._passed_on(info):
                            continue
                        self.unreaped.discard(info.worker)
                        return info
            now = time.monotonic()
            if now >= deadline:
                return None
            if self.scheduler.cheap_wait_any or self._lister.busy:
                pause = self.timings.poll
            else:
                pause = self._next_listing - now
            time.sleep(max(0.0, min(pause, deadline - now)))

    def _passed_on(self, info: ExitInfo) -> bool:
        """Hand an end that wait(ANY) gave this collector to the backend that submitted the worker, if
        that is another; whether it was."""
        owner = self.owners.pop(info.worker, None)
        if owner is not None and owner is not self:
            owner.mailbox.append(info)
            return True
        return False

    def _wait_once(self) -> ExitInfo | None:
        """One finished job without blocking: DRMAA's wait takes whole seconds, too coarse to block on."""
        drmaa = self.drmaa
        try:
            job = self.session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, drmaa.Session.TIMEOUT_NO_WAIT)
        except (drmaa.errors.ExitTimeoutException, drmaa.errors.InvalidJobException):
            return None  # nothing finished yet, or no job of this session left to wait for
        except (drmaa.errors.DrmCommunicationException, drmaa.errors.TryLaterException) as error:
            # qmaster restarting, say: the workers carry on over HTTP; ask again on the next turn.
            log.warning("cannot reach %s for exit information (will keep asking): %s", self.scheduler.title, error)
            self.saw_outage = True
            self._next_reconcile = time.monotonic() + self.timings.reconcile_after_error
            return None
        except Exception as error:
            # A task deleted while still queued (qdel from outside) makes wait(ANY) fail with
            # "no usage information" (DRMAA error 24) without saying which job it was: look.
            log.info("wait() failed without naming the job (%s); checking which workers are gone", error)
            self._next_reconcile = 0.0
            return None
        return self._exit_info(job)

    def _exit_info(self, job: Any, state: str = "") -> ExitInfo:
        """A DRMAA JobInfo in neutral form; ``state`` is Slurm's word for how the job ended, if known."""
        usage = job.resourceUsage if self.scheduler.reports_usage else None
        return ExitInfo(
            worker=self.names.name(job.jobId),
            exited=bool(job.hasExited),
            exit_status=int(job.exitStatus) if job.hasExited else None,
            signaled=bool(job.hasSignal),
            signal=str(job.terminatedSignal or ""),
            core_dumped=bool(job.hasCoreDump),
            aborted=bool(job.wasAborted) or state in self.scheduler.killed_states,
            state=state,
            resource_usage={name: _number(value) for name, value in (usage or {}).items()},
        )

    def _reconcile(self) -> None:
        """Report workers the scheduler no longer knows although wait() never returned them."""
        self._next_reconcile = time.monotonic() + self.timings.reconcile
        for worker_id in self.unreaped.workers():
            try:
                self.session.jobStatus(worker_id)
            except self.drmaa.errors.InvalidJobException:
                log.info("worker %s vanished from %s without exit information", worker_id, self.scheduler.title)
                self._gone(worker_id, ExitInfo(worker_id, aborted=True))
            except self.drmaa.errors.DrmaaException:
                self.saw_outage = True
                return  # qmaster unreachable: try again later

    def _listing_turn(self, now: float) -> bool:
        """Read the listing of this backend's arrays once it has ended, or start the next one when due;
        whether a listing was read (or DRMAA asked). Never waits for the scheduler's command."""
        answer = self._lister.answer()
        if answer is not None:
            self._read_listing(*answer)
            return True
        if self._lister.busy or now < self._next_listing:
            return False
        command = self.scheduler.listing_command(self.unreaped.arrays())
        self._soon = False
        if not self.unreaped or command is None or shutil.which(command[0]) is None:
            self._collect_ended(self.unreaped.workers(), None)  # no listing: DRMAA is asked per task
            return True
        self._listed = set(self.unreaped.workers())  # workers submitted after it started are not in it
        self._next_listing = now + self.timings.list_max  # should the command not start
        error = self._lister.start(command)
        if error is not None:
            self._failed(f"cannot run {command[0]}: {error}")
        return False

    def _read_listing(self, status: int, text: str) -> None:
        if status != 0 and "Invalid job id" not in text:  # that one: every array purged
            # Most often the controller is down (squeue fails after 18 s then): the workers carry on
            # over HTTP, and asking DRMAA per task would block each call as long.
            lines = text.strip().splitlines()
            self._failed(lines[-1] if lines else f"{self.scheduler.title}'s listing ended with status {status}")
            self.saw_outage = True
            self._next_listing = time.monotonic() + self.timings.list_max
            return
        if self._listing_failed:
            log.warning("%s's jobs are listed again", self.scheduler.title)
            self._listing_failed = False
        listed = [worker_id for worker_id in self.unreaped.workers() if worker_id in self._listed]
        self._collect_ended(listed, self.scheduler.parse_listing(text))

    def _failed(self, reason: str) -> None:
        """A listing that failed: said at WARNING the first time in a row, at DEBUG after."""
        level = logging.DEBUG if self._listing_failed else logging.WARNING
        log.log(level, "cannot list %s's jobs (will keep asking): %s", self.scheduler.title, reason)
        self._listing_failed = True

    def _collect_ended(self, workers: Sequence[str], states: dict[str, str] | None) -> None:
        """Wait, each by its id, for those of ``workers`` that the listing (or, with none, jobStatus) shows ended."""
        ended_any = False
        try:
            for worker_id in workers:
                info = self._listed_end(worker_id, states)
                if info is not None:
                    self._gone(worker_id, info)
                    ended_any = True
        except self.drmaa.errors.DrmaaException as error:  # the controller is unreachable (slurm-drmaa: after ~18 s)
            log.warning("cannot reach %s for exit information (will keep asking): %s", self.scheduler.title, error)
            self.saw_outage = True
        soon = ended_any or self._soon  # a change while the listing ran, which it may not show
        interval = self.timings.list_min if soon else min(self._listing_interval * 2, self.timings.list_max)
        self._listing_interval = interval
        self._next_listing = time.monotonic() + interval

    def _listed_end(self, worker_id: str, states: dict[str, str] | None) -> ExitInfo | None:
        """The end of one worker if the listing (or, with none, jobStatus) shows it ended, else None.

        A pending Slurm task that was cancelled leaves the listing at once, but wait() returns it only
        once Slurm purges its record (MinJobAge later), with jobStatus "undetermined" until then: it
        never ran, so its end is reported here as an abort.
        """
        drmaa = self.drmaa
        job = self.names.job(worker_id)
        state = "" if states is None else states.get(worker_id, "")
        if states is None:
            if self.session.jobStatus(job) not in (drmaa.JobState.DONE, drmaa.JobState.FAILED,
                                                   drmaa.JobState.UNDETERMINED):
                return None
        elif state in self.scheduler.active_states:
            return None
        try:
            return self._exit_info(self.session.wait(job, drmaa.Session.TIMEOUT_NO_WAIT), state)
        except drmaa.errors.ExitTimeoutException:
            cancelled_while_queued = (self.scheduler.cancelled_queued_unseen and state in ("", "CANCELLED")
                                      and self.session.jobStatus(job) == drmaa.JobState.UNDETERMINED)
            return ExitInfo(worker_id, aborted=True) if cancelled_while_queued else None
        except drmaa.errors.InvalidJobException:  # not known to the session any more: it vanished
            return ExitInfo(worker_id, aborted=True)

    def _gone(self, worker_id: str, info: ExitInfo) -> None:
        """Hand a worker's end to its sweep's backend (this one, most often) and stop tracking it."""
        self.unreaped.discard(worker_id)
        self.names.forget(worker_id)
        owner = self.owners.pop(worker_id, None) or self
        owner.mailbox.append(info)

    def stop(self) -> None:
        """At close: a listing still running is not waited for."""
        self._lister.stop()

    def forget_owners(self, worker_ids: Sequence[str]) -> None:
        """At close: these workers' ends, if they ever come, are nobody's."""
        with self.lock:
            for worker_id in worker_ids:
                self.owners.pop(worker_id, None)
