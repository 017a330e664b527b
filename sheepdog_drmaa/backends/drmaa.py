"""Workers as array jobs through the DRMAA C library (Grid Engine, Slurm). The only importer of ``drmaa``.

drmaa-python keeps one error buffer for all threads and DRMAA allows one session per process,
so every call goes through one process-wide session under one lock. Several sweeps in one
process share it; exit information that ``wait(ANY)`` hands to the wrong sweep is passed on.

The backend is made of small parts, each with one job: submitting and naming workers and asking
for their removal (here); learning how workers ended (:mod:`.exits`, handed the drmaa module and
the session from here); which workers the scheduler shows started, and on which host
(:mod:`.started`, a listing run in the background); and removals kept while the scheduler is
unreachable (:mod:`.removals`).

No removal is lost while the scheduler is unreachable (qmaster restarting, say): a control call
that fails for that is kept and done once the scheduler answers again (on Slurm, and after an
outage, removals go by the scheduler's command in the background from the start); ``close`` waits
for that (at most ``outage_wait``) and names what it could not remove. Opening the session is tried again
for as long while the scheduler cannot be reached.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import protocol
from ..errors import BackendUnavailable, SchedulerOutage, SchedulerUnreachable, SubmissionRefused
from ..model import ExitInfo
from . import Leftover, WorkerSpec, log_paths, sites, worker_command
from .exits import ExitCollector, JobNames
from .removals import KeptRemovals
from .schedulers import Scheduler, identify
from .started import StartedWatch

log = logging.getLogger(__name__)

OUTAGE_WAIT_SECONDS = 120.0
# At close, how often kept removals are tried while waiting for the scheduler to answer.
CLOSE_POLL_SECONDS = 0.05
# At close, a removal command under way is given this long, however short outage_wait (a busy
# controller may take seconds to answer); one not answered within it is said at INFO.
CLOSE_LEAST_SECONDS = 5.0
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
        self.owner: dict[str, ExitCollector] = {}  # worker id -> the collector of the backend that submitted it
        self.exiting: threading.Thread | None = None  # the previous session, closing in the background
        self.half_open = False  # an open of ours failed and the library may still believe it open

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
                    ours = self.half_open  # an "existing session" is then our failed one, not the caller's
                    error = self._initialize(drmaa)
                    if error is not None:
                        remaining = deadline - time.monotonic()
                        unreachable = ours or _unreachable_at_open(drmaa, error)
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
            if self.half_open:  # our own failed open, which the library still holds: close it, try again
                self._close_half_open(session, drmaa)
                refused: BaseException = error
                return refused
            # Not ours to close: the calling program may hold a DRMAA session of its own.
            failure: BaseException = BackendUnavailable(
                f"{error}: this process already holds a DRMAA session (opened by other code); DRMAA allows one "
                "per process, so run the sweep from a process without one")
            return failure
        except drmaa.errors.DrmaaException as error:
            self.half_open = True
            self._close_half_open(session, drmaa)
            failure = error
            return failure
        self.scheduler = identify(str(session.drmaaImplementation), str(session.drmsInfo))
        self.session = session
        return None

    def _close_half_open(self, session: Any, drmaa: Any) -> None:
        """drmaa_exit after a failed open. Seen after a qmaster restart ("can't resolve host name"):
        it can fail too, and the library refuses every open as "existing DRMAA session" until an
        exit gets through; so it is tried again before each open while the outage is waited out."""
        try:
            session.exit()
        except drmaa.errors.DrmaaException as cleanup:
            log.debug("closing the session that failed to open: %s", cleanup)
        else:
            self.half_open = False

    def _wait_for_exiting(self, deadline: float) -> None:
        """The C library holds one session at a time: let the last one finish closing (bounded)."""
        if self.exiting is None:
            return
        if self.exiting.is_alive():
            log.info("waiting for the previous DRMAA session to close (after an outage this takes about a minute)")
        self.exiting.join(max(0.0, deadline - time.monotonic()))
        if self.exiting.is_alive():
            # An outage, not a missing scheduler: backend="auto" must not run the sweep here instead.
            raise SchedulerOutage("the previous DRMAA session of this process is still closing (its scheduler "
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


def _shows_ended(drmaa: Any, session: Any, job: str, error: BaseException) -> bool:
    """Whether a control call failed with InternalException because the job has ended, as DRMAA shows it.
    Seen with slurm-drmaa, which raises it for an ended job as for an unreachable controller: on a
    scheduler whose words for that are not known, a sweep's end otherwise waited outage_wait for nothing."""
    if not isinstance(error, drmaa.errors.InternalException):
        return False  # a communication error: asking again would only wait for another
    try:
        return session.jobStatus(job) in (drmaa.JobState.DONE, drmaa.JobState.FAILED)
    except drmaa.errors.InvalidJobException:
        return True
    except drmaa.errors.DrmaaException:
        return False


def _some(targets: Sequence[str], shown: int = 10) -> str:
    """The first few of many ids, for a log line."""
    more = len(targets) - shown
    return " ".join(targets[:shown]) + (f" and {more} more" if more > 0 else "")


def _read_max_array_size(scheduler: Scheduler) -> int:
    """The scheduler's largest array (Grid Engine's max_aj_tasks, Slurm's MaxArraySize), or its default;
    remembered beside the store with the site's other answers."""
    text = sites.read(scheduler, scheduler.config_command) if scheduler.config_command else None
    return scheduler.default_max_array_size if text is None else scheduler.max_array_size(text)


class DrmaaBackend:
    """Workers submitted, ended and removed through the process's DRMAA session."""

    name = "drmaa"

    def __init__(self, outage_wait: float = OUTAGE_WAIT_SECONDS) -> None:
        """``outage_wait``: how long to wait for an unreachable scheduler to open the session, and at
        close for the removals it could not take."""
        self.drmaa = _import_drmaa()
        self.outage_wait = outage_wait
        self.session = _shared.open(self.drmaa, outage_wait)
        self.scheduler = _shared.scheduler
        self._max_array_size: int | None = None  # read at the first submission, after the site checks asked
        self._names = JobNames()  # plain DRMAA: worker name -> DRMAA job id, and back
        self._exits = ExitCollector(self.drmaa, self.session, self.scheduler, _shared.lock, _shared.owner,
                                    self._names)
        self._started = StartedWatch(self.scheduler)
        self._kept = KeptRemovals(self.scheduler, self._send)  # removals waiting for the scheduler to answer
        self._outage = False  # a call of this backend found the scheduler unreachable
        self._closed = False
        drmaa = self.drmaa
        # What a control call raises when the scheduler cannot be reached (slurm-drmaa: InternalException).
        self._unreachable = (drmaa.errors.DrmCommunicationException, drmaa.errors.TryLaterException,
                             drmaa.errors.InternalException)

    @property
    def _saw_outage(self) -> bool:
        """The scheduler was unreachable at some point (to this backend's calls, or to its exit collection)."""
        return self._outage or self._exits.saw_outage

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
        """Submit, excluding only the hosts to avoid that may be excluded (see :func:`.sites.exclusions`;
        not asked after an outage, when its commands may hang); a Grid Engine or Slurm submission refused
        with exclusions goes out again without them."""
        if spec.avoid_hosts and not self._saw_outage:
            spec = dataclasses.replace(spec, avoid_hosts=sites.exclusions(self.scheduler, spec))
        try:
            return self._submit(count, spec)
        except SubmissionRefused as refusal:
            if not spec.avoid_hosts or not self.scheduler.bulk:
                raise
            log.warning("%s; submitting without excluding %s instead", refusal, ", ".join(spec.avoid_hosts))
            return self._submit(count, dataclasses.replace(spec, avoid_hosts=()))

    def _submit(self, count: int, spec: WorkerSpec) -> list[str]:
        native = self.scheduler.native_specification(spec)
        title = self.scheduler.title
        errors = self.drmaa.errors
        ids: list[str] = []
        with _shared.lock:
            template = self.session.createJobTemplate()
            try:
                self._describe(template, spec, native)
                if self.scheduler.bulk:
                    self._run_bulk(template, count, ids)
                else:
                    ids.extend(self._run_named(template, spec) for _ in range(count))
            except (errors.DrmCommunicationException, errors.TryLaterException, errors.InternalException) as error:
                self._outage = True
                raise SchedulerUnreachable(f"cannot reach {title} to submit workers: {error}") from error
            except (errors.DeniedByDrmException, errors.InvalidAttributeValueException,
                    errors.InvalidAttributeFormatException) as error:
                raise SubmissionRefused(
                    f"{title} refused the workers' job: {error}. Check queue={spec.queue!r} and "
                    f"native_spec={spec.native_spec!r}.") from error
            finally:
                self.session.deleteJobTemplate(template)
            self._exits.track(ids)  # under the lock, so that no other backend's wait(ANY) takes their ends
        return ids

    def _describe(self, template: Any, spec: WorkerSpec, native: str | None) -> None:
        """Fill in the job template of ``spec``'s workers."""
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

    def _run_bulk(self, template: Any, count: int, ids: list[str]) -> None:
        """Submit ``count`` workers as arrays of at most max_array_size, adding their ids to ``ids``."""
        remaining = count
        while remaining:
            size = min(remaining, self.max_array_size)
            try:
                ids.extend(self.session.runBulkJobs(template, 1, size, 1))
            except self.drmaa.errors.DrmaaException as error:
                if not ids:
                    raise
                # Some arrays went out: they are this submission (the driver asks again
                # for the rest), never ids dropped with an exception.
                log.warning("submitted %d of %d workers before %s refused the rest (%s); the rest "
                            "will be asked for again", len(ids), count, self.scheduler.title, error)
                return
            remaining -= size

    def _run_named(self, template: Any, spec: WorkerSpec) -> str:
        """Submit one worker as a job of its own, telling it its name (plain DRMAA only)."""
        name = f"{spec.job_name}-{os.getpid()}-{next(_serial)}"
        template.jobEnvironment = {**spec.environment, protocol.ENV_WORKER_ID: name}
        paths = log_paths(spec, name)
        template.outputPath, template.errorPath = ":" + paths["stdout"], ":" + paths["stderr"]
        job = self.session.runJob(template)
        self._names.add(name, job)
        return name

    def execution_hosts(self, spec: WorkerSpec) -> list[str] | None:
        """Where the hosts that could run ``spec``'s workers are reached (their names, or Slurm's NodeAddr),
        else every execution host's name; None when they cannot be listed."""
        hosts = sites.request_hosts(self.scheduler, spec)
        if hosts:
            return list(dict.fromkeys(host.address for host in hosts))
        if not self.scheduler.hosts_command:
            return None
        text = sites.read(self.scheduler, self.scheduler.hosts_command)
        return None if text is None else list(dict.fromkeys(text.split()))

    def running_hosts(self) -> dict[str, str | None]:
        """The workers the last listing showed started, and not reported ended since, with their hosts."""
        self._started.want(time.monotonic())
        self._background_work()
        return self._started.hosts(self._exits.unreaped)

    def _background_work(self) -> None:
        """Read a finished listing, start the next one when due, and retry kept removals once the
        scheduler answers again. Never waits for the scheduler."""
        arrays = sorted(set(self._exits.unreaped.arrays()) | {self.scheduler.array_of(target) for target in self._kept})
        self._started.poll(time.monotonic(), arrays, needed=self._kept.outage)
        if self._kept:
            self._kept.retry(self._started.answered)

    def wait_any(self, timeout: float) -> ExitInfo | None:
        self._background_work()
        return self._exits.wait_any(timeout)

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """One control call per array job whose every remaining task goes, one per task otherwise.

        Each call is a round trip to the scheduler (about 3 ms on Grid Engine here), so removing a
        whole array of 1,000 queued workers task by task would take seconds.
        """
        self._remove(self._exits.unreaped.removal_targets(worker_ids))
        self._exits.list_soon()

    def _remove(self, targets: Sequence[str]) -> None:
        """Ask the scheduler to remove each target; while it is unreachable, keep them for later."""
        if self._kept.outage:  # asking now would only wait for the failure (minutes, over a network)
            self._kept.keep(targets, "unreachable")
            return
        # After an outage control() may block for minutes (on Slurm, 9 s whenever slurmctld is down):
        # the scheduler's command, in the background.
        if self._saw_outage or self.scheduler.removes_by_command:
            self._kept.add(targets)
            self._background_work()
            return
        left, error = self._send(targets)
        if left:
            self._outage = True
            self._kept.keep(left, error or "unreachable")

    def _send(self, targets: Sequence[str]) -> tuple[list[str], BaseException | None]:
        """One control call per target, until the scheduler proves unreachable: the targets not asked, and why."""
        drmaa = self.drmaa
        with _shared.lock:
            for position, target in enumerate(targets):
                job = self._names.job(target)
                try:
                    self.session.control(job, drmaa.JobControlAction.TERMINATE)
                except self._unreachable as error:
                    if not (any(phrase in str(error) for phrase in self.scheduler.already_gone)
                            or _shows_ended(drmaa, self.session, job, error)):
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
        leftover = self._exits.unreaped.workers()
        try:
            self.terminate(leftover)
            if self._kept:
                self._wait_for_kept_removals()
        finally:
            self._started.stop()
            self._exits.stop()
            self._exits.forget_owners(leftover)
            _shared.release(answers=not self._kept, outage_seen=self._saw_outage)
        if self._saw_outage and leftover:
            log.warning("%d workers of this sweep never reported their end after %s was unreachable: %s",
                        len(leftover), self.scheduler.title,
                        self.scheduler.stale_after_outage(sorted({self.scheduler.array_of(w) for w in leftover})))

    def _wait_for_kept_removals(self) -> None:
        """Until the removals are taken: at most outage_wait once the scheduler proved unreachable, and
        at least CLOSE_LEAST_SECONDS for a command under way."""
        began = time.monotonic()
        said = False
        while self._kept:
            waited = time.monotonic() - began
            if waited >= self.outage_wait and (self._kept.outage or waited >= CLOSE_LEAST_SECONDS):
                break
            if not said and (self._kept.outage or waited >= CLOSE_LEAST_SECONDS):
                targets = list(self._kept)
                log.log(logging.WARNING if self._kept.outage else logging.INFO,
                        "waiting up to %g s for %s to answer, to remove %d workers or jobs that would otherwise "
                        "start after this sweep returned (%s)", max(self.outage_wait - waited, 0.0),
                        self.scheduler.title, len(targets), _some(targets))
                said = True
            self._background_work()
            time.sleep(CLOSE_POLL_SECONDS)
        self._kept.stop()
        if self._kept:
            left = list(self._kept)
            log.error("%s did not answer within %g s: %d workers or jobs of this sweep were NOT removed and may "
                      "still start; remove them yourself: %s", self.scheduler.title, self.outage_wait, len(left),
                      self.scheduler.removal_hint(left))
