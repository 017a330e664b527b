"""Workers as array jobs through the DRMAA C library (Grid Engine, Slurm). The only importer of ``drmaa``.

drmaa-python keeps one error buffer for all threads and DRMAA allows one session per process,
so every call goes through one process-wide session under one lock. Several sweeps in one
process share it; exit information that ``wait(ANY)`` hands to the wrong sweep is passed on.

How the end of a worker is learnt depends on the scheduler. Grid Engine's qmaster pushes job
ends to the library, so ``wait(ANY)`` is a local call, polled every 20 ms. On Slurm every
``wait(ANY)`` asks the controller about each unreaped job (1.6 s with 1,000 jobs), so instead
one ``squeue`` lists the sweep's arrays per poll, every 0.5 s backing off to 4 s while nothing
changes, and only the tasks it shows ended are waited for, each by its own id.

Which workers the scheduler shows started, and on which host, comes from a listing run in the
background (a subprocess read on a later call, never waited for) at most every few seconds.

No removal is lost while the scheduler is unreachable (qmaster restarting, say): a control call
that fails for that is kept (:mod:`.removals`) and done once the scheduler answers again; ``close``
waits for that (at most ``outage_wait``) and names what it could not remove. Opening the session
is tried again for as long while the scheduler cannot be reached.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import protocol
from ..errors import BackendUnavailable, SchedulerOutage, SchedulerUnreachable, SubmissionRefused
from ..model import ExitInfo
from . import Leftover, WorkerSpec, commands, log_paths, sites, worker_command
from .removals import KeptRemovals
from .schedulers import Scheduler, identify

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02
# Listing a sweep's jobs (Slurm, or any scheduler whose wait(ANY) is not cheap): first soon after
# a change, then less often while nothing ends. Every ended job is collected well within Slurm's
# MinJobAge (300 s by default), after which slurm-drmaa would make up its exit information.
LIST_MIN_SECONDS = 0.5
LIST_MAX_SECONDS = 4.0
# How often to look for workers whose end wait() never reported (lost during a qmaster outage).
RECONCILE_SECONDS = 60.0
RECONCILE_AFTER_ERROR_SECONDS = 5.0
# Which workers the scheduler shows started: listed at most this often, and only while asked for
# (or while removals wait for the scheduler to answer); a listing that hangs is given up.
STARTED_SECONDS = 2.0
STARTED_WANTED_SECONDS = 10.0
STARTED_TIMEOUT_SECONDS = 30.0
OUTAGE_WAIT_SECONDS = 120.0
# Opening a session while the scheduler is unreachable: tried again after 1 s, 2 s, 4 s ... at most 10 s apart.
OPEN_RETRY_FIRST_SECONDS = 1.0
OPEN_RETRY_MAX_SECONDS = 10.0
# Words of a failed drmaa_init that mean the scheduler could not be reached (Son of Grid Engine raises
# InternalException for these as for a wrong SGE_ROOT, which waiting would not mend).
_UNREACHABLE_WORDS = ("qmaster", "connect", "resolve", "commlib", "contact", "timeout", "timed out")
TLS_FIX = "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096"
DEBIAN_LIBRARY = "/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0"
DEBIAN_SGE_ROOT = "/var/lib/gridengine"


def _default_debian_environment() -> None:
    """Fill in DRMAA_LIBRARY_PATH and SGE_ROOT for Debian's packages when they are unset."""
    if not os.environ.get("DRMAA_LIBRARY_PATH") and os.path.exists(DEBIAN_LIBRARY):
        os.environ["DRMAA_LIBRARY_PATH"] = DEBIAN_LIBRARY
    if not os.environ.get("SGE_ROOT") and os.path.isdir(DEBIAN_SGE_ROOT):
        os.environ["SGE_ROOT"] = DEBIAN_SGE_ROOT
        os.environ.setdefault("SGE_CELL", "default")


def _import_drmaa() -> Any:
    """Import drmaa-python, turning its load failures into messages that say what to do."""
    _default_debian_environment()
    try:
        import drmaa
    except RuntimeError as error:
        raise BackendUnavailable(
            f"the DRMAA library was not found ({error}). Set DRMAA_LIBRARY_PATH to the path of "
            f"libdrmaa.so (Son of Grid Engine on Debian: {DEBIAN_LIBRARY}).") from error
    except OSError as error:
        if "static TLS" in str(error):
            raise BackendUnavailable(
                f"the DRMAA library could not be loaded into this running Python ({error}). Start Python "
                f"with {TLS_FIX} in its environment, e.g. `export {TLS_FIX}` before running it; this cannot "
                "be fixed from inside the process.") from error
        raise BackendUnavailable(
            f"the DRMAA library named by DRMAA_LIBRARY_PATH could not be loaded: {error}. Point "
            f"DRMAA_LIBRARY_PATH at libdrmaa.so (Debian: {DEBIAN_LIBRARY}).") from error
    except ImportError as error:
        raise BackendUnavailable(f"the drmaa package is not installed ({error}): pip install drmaa") from error
    return drmaa


class _SharedSession:
    """The process's one DRMAA session, its scheduler, its lock, and each backend's misdelivered exits."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.session: Any = None
        self.scheduler: Scheduler = Scheduler()
        self.users = 0
        self.owner: dict[str, DrmaaBackend] = {}
        self.exiting: threading.Thread | None = None  # the previous session, closing in the background

    def open(self, drmaa: Any, outage_wait: float) -> Any:
        """The session, opened on first use. While the scheduler cannot be reached, opening is tried
        again with backoff for ``outage_wait`` seconds (said once at WARNING), then BackendUnavailable."""
        deadline = time.monotonic() + outage_wait
        pause, warned = OPEN_RETRY_FIRST_SECONDS, False
        error: BaseException | None = None
        remaining = outage_wait
        while True:
            with self.lock:
                self._wait_for_exiting(deadline)
                if self.session is None:
                    error = self._initialize(drmaa)
                    if error is not None:
                        remaining = deadline - time.monotonic()
                        unreachable = _unreachable_at_open(drmaa, error)
                        if not unreachable or remaining <= 0:
                            failure = SchedulerOutage if unreachable else BackendUnavailable
                            raise failure(
                                f"cannot open a DRMAA session: {error}"
                                f"{f' (tried for {outage_wait:g} s, outage_wait)' if warned else ''}. Check that "
                                "the scheduler is running (qstat or squeue should answer) and, for Grid Engine, "
                                "SGE_ROOT and SGE_CELL.") from error
                if self.session is not None:
                    self.users += 1
                    return self.session
            if not warned:
                log.warning("cannot open a DRMAA session (%s); trying again for up to %g s", error, outage_wait)
                warned = True
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, OPEN_RETRY_MAX_SECONDS)

    def _initialize(self, drmaa: Any) -> BaseException | None:
        """Open the session; on failure, undo what the C library kept of it, and return the error.

        After a failed drmaa_init, Son of Grid Engine's library believes a session is open and
        refuses every later one ("existing DRMAA session"): drmaa_exit makes it forget.
        """
        session = drmaa.Session()
        try:
            session.initialize()
        except drmaa.errors.AlreadyActiveSessionException as error:
            # Not ours to close: the calling program may hold a DRMAA session of its own.
            failure: BaseException = BackendUnavailable(
                f"{error}: this process already holds a DRMAA session (opened by other code); DRMAA allows one "
                "per process, so run the sweep from a process without one")
            return failure
        except drmaa.errors.DrmaaException as error:
            try:
                session.exit()
            except drmaa.errors.DrmaaException as cleanup:
                log.debug("closing the session that failed to open: %s", cleanup)
            failure = error
            return failure
        self.scheduler = identify(str(session.drmaaImplementation), str(session.drmsInfo))
        self.session = session
        return None

    def _wait_for_exiting(self, deadline: float) -> None:
        """The C library holds one session at a time: let the last one finish closing (bounded)."""
        if self.exiting is None:
            return
        if self.exiting.is_alive():
            log.info("waiting for the previous DRMAA session to close (after an outage this takes about a minute)")
        self.exiting.join(max(0.0, deadline - time.monotonic()))
        if self.exiting.is_alive():
            raise BackendUnavailable("the previous DRMAA session of this process is still closing (its scheduler "
                                     "does not answer); try again once the scheduler answers")
        self.exiting = None

    def release(self, answers: bool = True, outage_seen: bool = False) -> None:
        """One user fewer; the last closes the session. Not when the scheduler does not answer (exit()
        would block until it does): the session is then kept for this process's next sweep. After an
        outage, exit() takes about a minute (measured on Son of Grid Engine 8.1.9, whose session gets
        no more job ends then): it is done in the background, and the next open waits for it (the
        library refuses a new session while one is open, and may fail oddly while one closes)."""
        with self.lock:
            self.users -= 1
            if self.users > 0 or self.session is None:
                return
            if not answers:
                log.info("the DRMAA session is left open: closing it would wait for the scheduler to answer")
                return
            session, self.session = self.session, None
            if not outage_seen:
                session.exit()
                return

        def exit_in_background() -> None:
            try:
                session.exit()
            except Exception as error:
                log.debug("closing the DRMAA session after an outage: %s", error)
        with self.lock:
            self.exiting = threading.Thread(target=exit_in_background, name="sheepdog-drmaa-exit", daemon=True)
            self.exiting.start()


_shared = _SharedSession()
_serial = itertools.count(1)  # names of workers submitted one job each (plain DRMAA)


def _unreachable_at_open(drmaa: Any, error: BaseException) -> bool:
    """Whether a failed drmaa_init is worth trying again: the scheduler unreachable, not a wrong set-up."""
    if isinstance(error, (drmaa.errors.DrmCommunicationException, drmaa.errors.TryLaterException)):
        return True
    return any(word in str(error).lower() for word in _UNREACHABLE_WORDS)


class _Unanswered(Exception):
    """The scheduler's listing command failed (its controller down, most often)."""


def _read_max_array_size(scheduler: Scheduler) -> int:
    """The scheduler's largest array (Grid Engine's max_aj_tasks, Slurm's MaxArraySize), or its default;
    remembered beside the store with the site's other answers."""
    text = sites.read(scheduler, scheduler.config_command) if scheduler.config_command else None
    return scheduler.default_max_array_size if text is None else scheduler.max_array_size(text)


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


class DrmaaBackend:
    name = "drmaa"

    def __init__(self, outage_wait: float = OUTAGE_WAIT_SECONDS) -> None:
        """``outage_wait``: how long to wait for an unreachable scheduler to open the session, and at
        close for the removals it could not take."""
        self.drmaa = _import_drmaa()
        self.outage_wait = outage_wait
        self.session = _shared.open(self.drmaa, outage_wait)
        self.scheduler = _shared.scheduler
        self._max_array_size: int | None = None  # read at the first submission, after the site checks asked
        self._mailbox: collections.deque[ExitInfo] = collections.deque()
        self._unreaped: dict[str, set[str]] = {}  # array job id -> its task ids not yet reported ended
        self._job_of: dict[str, str] = {}  # plain DRMAA: worker name -> DRMAA job id, and back
        self._name_of: dict[str, str] = {}
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        self._next_listing = 0.0
        self._listing_interval = LIST_MIN_SECONDS
        self._closed = False
        drmaa = self.drmaa
        # What a control call raises when the scheduler cannot be reached (slurm-drmaa: InternalException).
        self._unreachable = (drmaa.errors.DrmCommunicationException, drmaa.errors.TryLaterException,
                             drmaa.errors.InternalException)
        self._started_lister = commands.Background(STARTED_TIMEOUT_SECONDS)
        self._started: dict[str, str | None] = {}  # the last listing: started worker -> its host
        self._next_started = 0.0
        self._started_wanted_until = 0.0
        self._answered = float("-inf")  # when a listing last succeeded (the scheduler answers)
        self._kept = KeptRemovals(self.scheduler, self._send)  # removals waiting for the scheduler to answer
        self._saw_outage = False  # the scheduler was unreachable at some point

    @property
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            self._max_array_size = _read_max_array_size(self.scheduler)
        return self._max_array_size

    def check_request(self, spec: WorkerSpec) -> None:
        """The options as this scheduler would be asked (Grid Engine spellings refused on Slurm, say),
        and against what the live scheduler offers (its queues, parallel environments, hosts)."""
        self.scheduler.check_request(spec)
        sites.check_request(self.scheduler, spec)

    def submit(self, count: int, spec: WorkerSpec) -> list[str]:
        native = self.scheduler.native_specification(spec)
        title = self.scheduler.title
        ids: list[str] = []
        with _shared.lock:
            template = self.session.createJobTemplate()
            try:
                command = worker_command(spec)
                template.remoteCommand = command[0]
                template.args = command[1:]
                template.jobName = spec.job_name
                template.workingDirectory = spec.working_directory
                template.jobEnvironment = spec.environment
                paths = log_paths(spec, self.scheduler.log_id)  # both set: Slurm sends an unset errorPath to /dev/null
                template.outputPath = ":" + paths["stdout"]
                template.errorPath = ":" + paths["stderr"]
                if native:
                    template.nativeSpecification = native
                remaining = count if self.scheduler.bulk else 0
                while remaining:
                    size = min(remaining, self.max_array_size)
                    try:
                        ids.extend(self.session.runBulkJobs(template, 1, size, 1))
                    except self.drmaa.errors.DrmaaException as error:
                        if not ids:
                            raise
                        # Some arrays went out: they are this submission (the runner asks again
                        # for the rest), never ids dropped with an exception.
                        log.warning("submitted %d of %d workers before %s refused the rest (%s); the rest "
                                    "will be asked for again", len(ids), count, title, error)
                        break
                    remaining -= size
                if not self.scheduler.bulk:
                    ids.extend(self._run_named(template, spec) for _ in range(count))
            except (self.drmaa.errors.DrmCommunicationException, self.drmaa.errors.TryLaterException,
                    self.drmaa.errors.InternalException) as error:
                self._saw_outage = True
                raise SchedulerUnreachable(f"cannot reach {title} to submit workers: {error}") from error
            except (self.drmaa.errors.DeniedByDrmException, self.drmaa.errors.InvalidAttributeValueException,
                    self.drmaa.errors.InvalidAttributeFormatException) as error:
                raise SubmissionRefused(
                    f"{title} refused the workers' job: {error}. Check queue={spec.queue!r} and "
                    f"native_spec={spec.native_spec!r}.") from error
            finally:
                self.session.deleteJobTemplate(template)
            for worker_id in ids:
                _shared.owner[worker_id] = self
        for worker_id in ids:
            self._unreaped.setdefault(self.scheduler.array_of(worker_id), set()).add(worker_id)
        self._list_soon()
        return ids

    def _run_named(self, template: Any, spec: WorkerSpec) -> str:
        """Submit one worker as a job of its own, telling it its name (plain DRMAA only)."""
        name = f"{spec.job_name}-{os.getpid()}-{next(_serial)}"
        template.jobEnvironment = {**spec.environment, protocol.ENV_WORKER_ID: name}
        paths = log_paths(spec, name)
        template.outputPath, template.errorPath = ":" + paths["stdout"], ":" + paths["stderr"]
        job = self.session.runJob(template)
        self._job_of[name], self._name_of[job] = job, name
        return name

    def _job(self, worker_or_array: str) -> str:
        """The DRMAA id to ask about a worker or an array job."""
        return self._job_of.get(worker_or_array, worker_or_array)

    def execution_hosts(self) -> list[str] | None:
        """The names of the scheduler's execution hosts; None when they cannot be listed."""
        if not self.scheduler.hosts_command:
            return None
        text = sites.read(self.scheduler, self.scheduler.hosts_command)
        return None if text is None else list(dict.fromkeys(text.split()))

    def running_hosts(self) -> dict[str, str | None]:
        """The workers the last listing showed started, and not reported ended since, with their hosts."""
        self._started_wanted_until = time.monotonic() + STARTED_WANTED_SECONDS
        self._background_work()
        return {worker: host for worker, host in self._started.items()
                if worker in self._unreaped.get(self.scheduler.array_of(worker), ())}

    def _background_work(self) -> None:
        """Read a finished listing, start the next one when due, and retry kept removals once the
        scheduler answers again. Never waits for the scheduler."""
        answer = self._started_lister.answer()
        if answer is not None:
            status, text = answer
            try:
                if status != 0:
                    raise ValueError("the listing command failed")
                self._started = self.scheduler.parse_started(text)
                self._answered = time.monotonic()
            except ValueError as error:
                log.debug("cannot list the started workers: %s", error)
        now = time.monotonic()
        arrays = sorted(set(self._unreaped) | {self.scheduler.array_of(target) for target in self._kept})
        command = self.scheduler.started_command(arrays)
        wanted = now < self._started_wanted_until or self._kept
        if wanted and arrays and command and not self._started_lister.busy and now >= self._next_started:
            self._next_started = now + STARTED_SECONDS
            self._started_lister.start(command)
        if self._kept:
            listed = command is not None and shutil.which(command[0]) is not None
            self._kept.retry(self._answered if listed else float("-inf"))

    def wait_any(self, timeout: float) -> ExitInfo | None:
        self._background_work()
        deadline = time.monotonic() + timeout
        while True:
            if self._mailbox:
                return self._mailbox.popleft()
            with _shared.lock:
                if self._mailbox:
                    continue
                if not self.scheduler.cheap_wait_any:
                    if time.monotonic() >= self._next_listing:
                        self._collect_listed()
                        continue
                elif time.monotonic() >= self._next_reconcile:
                    self._reconcile()
                    continue
                else:
                    info = self._wait_once()
                    if info is not None:
                        owner = _shared.owner.pop(info.worker, None)
                        if owner is not None and owner is not self:
                            owner._mailbox.append(info)
                            continue
                        self._forget(info.worker)
                        return info
            now = time.monotonic()
            if now >= deadline:
                return None
            pause = POLL_SECONDS if self.scheduler.cheap_wait_any else self._next_listing - now
            time.sleep(max(0.0, min(pause, deadline - now)))

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
            self._saw_outage = True
            self._next_reconcile = time.monotonic() + RECONCILE_AFTER_ERROR_SECONDS
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
            worker=self._name_of.get(job.jobId, job.jobId),
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
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        for tasks in list(self._unreaped.values()):
            for worker_id in list(tasks):
                try:
                    self.session.jobStatus(worker_id)
                except self.drmaa.errors.InvalidJobException:
                    log.info("worker %s vanished from %s without exit information", worker_id, self.scheduler.title)
                    self._gone(worker_id, ExitInfo(worker_id, aborted=True))
                except self.drmaa.errors.DrmaaException:
                    self._saw_outage = True
                    return  # qmaster unreachable: try again later

    def _collect_listed(self) -> None:
        """Wait, each by its id, for the workers that one listing of their arrays (or jobStatus) shows ended.

        A pending Slurm task that was cancelled leaves the listing at once, but wait() returns it only
        once Slurm purges its record (MinJobAge later), with jobStatus "undetermined" until then: it
        never ran, so its end is reported here as an abort.
        """
        drmaa = self.drmaa
        try:
            states = self._listing()
        except _Unanswered as error:
            log.warning("cannot list %s's jobs (will keep asking): %s", self.scheduler.title, error)
            self._next_listing = time.monotonic() + LIST_MAX_SECONDS
            return
        ended_any = False
        try:
            for worker_id in [w for tasks in self._unreaped.values() for w in tasks]:
                job = self._job(worker_id)
                state = "" if states is None else states.get(worker_id, "")
                if states is None:
                    if self.session.jobStatus(job) not in (drmaa.JobState.DONE, drmaa.JobState.FAILED,
                                                           drmaa.JobState.UNDETERMINED):
                        continue
                elif state in self.scheduler.active_states:
                    continue
                try:
                    info = self._exit_info(self.session.wait(job, drmaa.Session.TIMEOUT_NO_WAIT), state)
                except drmaa.errors.ExitTimeoutException:
                    cancelled_while_queued = (self.scheduler.cancelled_queued_unseen and state in ("", "CANCELLED")
                                              and self.session.jobStatus(job) == drmaa.JobState.UNDETERMINED)
                    if not cancelled_while_queued:
                        continue
                    info = ExitInfo(worker_id, aborted=True)
                except drmaa.errors.InvalidJobException:  # not known to the session any more: it vanished
                    info = ExitInfo(worker_id, aborted=True)
                self._gone(worker_id, info)
                ended_any = True
        except drmaa.errors.DrmaaException as error:  # the controller is unreachable (slurm-drmaa: after ~18 s)
            log.warning("cannot reach %s for exit information (will keep asking): %s", self.scheduler.title, error)
        interval = LIST_MIN_SECONDS if ended_any else min(self._listing_interval * 2, LIST_MAX_SECONDS)
        self._listing_interval = interval
        self._next_listing = time.monotonic() + interval

    def _listing(self) -> dict[str, str] | None:
        """{worker id: state} for every task of this backend's arrays in one query, or None to ask DRMAA per task.

        Raises _Unanswered when the scheduler does not answer: asking DRMAA per task then would
        block each query (slurm-drmaa: 18 s while slurmctld is down).
        """
        command = self.scheduler.listing_command(sorted(self._unreaped))
        if not self._unreaped or command is None or shutil.which(command[0]) is None:
            return None
        try:
            result = commands.run(command)
        except (OSError, subprocess.SubprocessError) as error:
            raise _Unanswered(f"{command[0]}: {error}") from error
        if result.returncode != 0 and "Invalid job id" not in result.stderr:  # that one: every array purged
            raise _Unanswered(f"{command[0]}: {result.stderr.strip()}")
        return self.scheduler.parse_listing(result.stdout)

    def _gone(self, worker_id: str, info: ExitInfo) -> None:
        """Hand a worker's end to its sweep's backend (this one, most often) and stop tracking it."""
        self._forget(worker_id)
        self._name_of.pop(self._job_of.pop(worker_id, ""), None)
        owner = _shared.owner.pop(worker_id, None) or self
        owner._mailbox.append(info)

    def _forget(self, worker_id: str) -> None:
        job = self.scheduler.array_of(worker_id)
        tasks = self._unreaped.get(job)
        if tasks is not None:
            tasks.discard(worker_id)
            if not tasks:
                del self._unreaped[job]

    def _list_soon(self) -> None:
        self._listing_interval = LIST_MIN_SECONDS
        self._next_listing = min(self._next_listing, time.monotonic() + LIST_MIN_SECONDS)

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """One control call per array job whose every remaining task goes, one per task otherwise.

        Each call is a round trip to the scheduler (about 3 ms on Grid Engine here), so removing a
        whole array of 1,000 queued workers task by task would take seconds.
        """
        requested = set(worker_ids)
        targets = []
        for job, tasks in self._unreaped.items():
            if tasks and tasks <= requested:
                targets.append(job)
                requested -= tasks
        targets.extend(sorted(requested))
        self._remove(targets)
        self._list_soon()

    def _remove(self, targets: Sequence[str]) -> None:
        """Ask the scheduler to remove each target; while it is unreachable, keep them for later."""
        if self._kept.outage:  # asking now would only wait for the failure (minutes, over a network)
            self._kept.keep(targets, "unreachable")
            return
        if self._saw_outage:  # after an outage, control() may block for minutes: the command, in the background
            self._kept.add(targets)
            self._background_work()
            return
        left, error = self._send(targets)
        if left:
            self._saw_outage = True
            self._kept.keep(left, error or "unreachable")

    def _send(self, targets: Sequence[str]) -> tuple[list[str], BaseException | None]:
        """One control call per target, until the scheduler proves unreachable: the targets not asked, and why."""
        drmaa = self.drmaa
        with _shared.lock:
            for position, target in enumerate(targets):
                try:
                    self.session.control(self._job(target), drmaa.JobControlAction.TERMINATE)
                except self._unreachable as error:
                    if not any(phrase in str(error) for phrase in self.scheduler.already_gone):
                        return list(targets[position:]), error
                    log.debug("terminating %s: %s", target, error)
                except drmaa.errors.DrmaaException as error:  # already gone, most often
                    log.debug("terminating %s: %s", target, error)
        return [], None

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Every job of an earlier client of the sweep goes whole: one call per array job."""
        if not self.scheduler.bulk:
            log.warning("cannot remove the %d workers an earlier client of this sweep submitted: on %s only that "
                        "client knew their job ids; they cannot reach this client and exit", len(leftovers),
                        self.scheduler.title)
            return
        self._remove(sorted({self.scheduler.array_of(worker_id) for worker_id, _, _ in leftovers}))

    def close(self) -> None:
        """Remove every worker not seen to end; removals the scheduler could not take yet are waited for
        (at most ``outage_wait``), so that nothing of the sweep starts after it returned."""
        if self._closed:
            return
        self._closed = True
        leftover = [worker_id for tasks in self._unreaped.values() for worker_id in tasks]
        self.terminate(leftover)
        if self._kept:
            self._wait_for_kept_removals()
        self._started_lister.stop()
        if self._saw_outage and leftover:
            log.warning("%d workers of this sweep never reported their end after %s was unreachable: Son of Grid "
                        "Engine 8.1.9 goes on showing such jobs as running (state r, dr once removed) after they "
                        "ended, holding their slots; their removal was asked for, and an administrator can clear "
                        "what is left with `qdel -f %s`", len(leftover), self.scheduler.title,
                        " ".join(sorted({self.scheduler.array_of(w) for w in leftover})))
        with _shared.lock:
            for worker_id in leftover:
                _shared.owner.pop(worker_id, None)
        _shared.release(answers=not self._kept, outage_seen=self._saw_outage)

    def _wait_for_kept_removals(self) -> None:
        targets = list(self._kept)
        if self._kept.outage:
            log.warning("waiting up to %g s for %s to answer, to remove %d workers or jobs that would otherwise "
                        "start after this sweep returned (%s)", self.outage_wait, self.scheduler.title, len(targets),
                        " ".join(targets))
        deadline = time.monotonic() + self.outage_wait
        while self._kept and time.monotonic() < deadline:
            self._background_work()
            time.sleep(POLL_SECONDS * 10)
        self._kept.stop()
        if self._kept:
            left = list(self._kept)
            log.error("%s did not answer within %g s: %d workers or jobs of this sweep were NOT removed and may "
                      "still start; remove them yourself: %s", self.scheduler.title, self.outage_wait, len(left),
                      self.scheduler.removal_hint(left))
