"""Workers as Grid Engine array jobs through the DRMAA C library. The only importer of ``drmaa``.

drmaa-python keeps one error buffer for all threads and DRMAA allows one session per process,
so every call goes through one process-wide session under one lock. Several sweeps in one
process share it; exit information that ``wait(ANY)`` hands to the wrong sweep is passed on.
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Sequence, Set

from ..errors import BackendUnavailable, SchedulerUnreachable, SubmissionRefused
from ..failures import ExitInfo
from . import Leftover, WorkerSpec, log_paths, worker_command

log = logging.getLogger(__name__)

DEFAULT_MAX_ARRAY_SIZE = 75_000
POLL_SECONDS = 0.02
# How often to look for workers whose end wait() never reported (lost during a qmaster outage).
RECONCILE_SECONDS = 60.0
RECONCILE_AFTER_ERROR_SECONDS = 5.0
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
    """The process's one DRMAA session, its lock, and a mailbox per backend for misdelivered exits."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.session: Any = None
        self.users = 0
        self.owner: Dict[str, "DrmaaBackend"] = {}

    def open(self, drmaa: Any) -> Any:
        with self.lock:
            if self.session is None:
                session = drmaa.Session()
                try:
                    session.initialize()
                except drmaa.errors.DrmaaException as error:
                    raise BackendUnavailable(
                        f"cannot open a DRMAA session with Grid Engine: {error}. Check SGE_ROOT and SGE_CELL "
                        "and that qmaster is running (qstat should answer).") from error
                self.session = session
            self.users += 1
            return self.session

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.session is not None:
                try:
                    self.session.exit()
                finally:
                    self.session = None


_shared = _SharedSession()


def _read_max_array_size() -> int:
    """Grid Engine's max_aj_tasks from ``qconf -sconf``, or its default when that cannot be read."""
    qconf = shutil.which("qconf")
    if qconf is None:
        return DEFAULT_MAX_ARRAY_SIZE
    try:
        text = subprocess.run([qconf, "-sconf"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "max_aj_tasks" and fields[1].isdigit() and int(fields[1]) > 0:
            return int(fields[1])
    return DEFAULT_MAX_ARRAY_SIZE


def _job_of(worker_id: str) -> str:
    """The array job id of a task id such as '49.3'."""
    return worker_id.split(".", 1)[0]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


class DrmaaBackend:
    name = "drmaa"

    def __init__(self) -> None:
        self.drmaa = _import_drmaa()
        self.session = _shared.open(self.drmaa)
        self.max_array_size = _read_max_array_size()
        self._mailbox: Deque[ExitInfo] = collections.deque()
        self._unreaped: Dict[str, Set[str]] = {}  # array job id -> its task ids not yet reported ended
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        self._closed = False

    def submit(self, count: int, spec: WorkerSpec) -> List[str]:
        ids: List[str] = []
        with _shared.lock:
            template = self.session.createJobTemplate()
            try:
                command = worker_command(spec)
                template.remoteCommand = command[0]
                template.args = command[1:]
                template.jobName = spec.job_name
                template.workingDirectory = spec.working_directory
                template.jobEnvironment = spec.environment
                paths = log_paths(spec, "$JOB_ID.$TASK_ID")
                template.outputPath = ":" + paths["stdout"]
                template.errorPath = ":" + paths["stderr"]
                native = []
                if spec.queue:
                    native.append(f"-q {spec.queue}")
                if spec.native_spec:
                    native.append(spec.native_spec)
                if native:
                    template.nativeSpecification = " ".join(native)
                remaining = count
                while remaining:
                    size = min(remaining, self.max_array_size)
                    ids.extend(self.session.runBulkJobs(template, 1, size, 1))
                    remaining -= size
            except (self.drmaa.errors.DrmCommunicationException, self.drmaa.errors.TryLaterException) as error:
                raise SchedulerUnreachable(f"cannot reach Grid Engine's qmaster to submit workers: {error}") from error
            except self.drmaa.errors.DeniedByDrmException as error:
                raise SubmissionRefused(
                    f"Grid Engine refused the workers' job: {error}. Check queue={spec.queue!r} and "
                    f"native_spec={spec.native_spec!r}.") from error
            finally:
                self.session.deleteJobTemplate(template)
            for worker_id in ids:
                _shared.owner[worker_id] = self
        for worker_id in ids:
            self._unreaped.setdefault(_job_of(worker_id), set()).add(worker_id)
        return ids

    def wait_any(self, timeout: float) -> Optional[ExitInfo]:
        deadline = time.monotonic() + timeout
        while True:
            if self._mailbox:
                return self._mailbox.popleft()
            with _shared.lock:
                if self._mailbox:
                    continue
                if time.monotonic() >= self._next_reconcile:
                    self._reconcile()
                    continue
                info = self._wait_once()
                if info is not None:
                    owner = _shared.owner.pop(info.worker, None)
                    if owner is not None and owner is not self:
                        owner._mailbox.append(info)
                        continue
                    self._forget(info.worker)
                    return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(POLL_SECONDS, remaining))

    def _wait_once(self) -> Optional[ExitInfo]:
        """One finished job without blocking: DRMAA's wait takes whole seconds, too coarse to block on."""
        drmaa = self.drmaa
        try:
            job = self.session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, drmaa.Session.TIMEOUT_NO_WAIT)
        except (drmaa.errors.ExitTimeoutException, drmaa.errors.InvalidJobException):
            return None  # nothing finished yet, or no job of this session left to wait for
        except (drmaa.errors.DrmCommunicationException, drmaa.errors.TryLaterException) as error:
            # qmaster restarting, say: the workers carry on over HTTP; ask again on the next turn.
            log.warning("cannot reach Grid Engine's qmaster for exit information (will keep asking): %s", error)
            self._next_reconcile = time.monotonic() + RECONCILE_AFTER_ERROR_SECONDS
            return None
        except Exception as error:
            # A task deleted while still queued (qdel from outside) makes wait(ANY) fail with
            # "no usage information" (DRMAA error 24) without saying which job it was: look.
            log.info("wait() failed without naming the job (%s); checking which workers are gone", error)
            self._next_reconcile = 0.0
            return None
        return ExitInfo(
            worker=job.jobId,
            exited=bool(job.hasExited),
            exit_status=int(job.exitStatus) if job.hasExited else None,
            signaled=bool(job.hasSignal),
            signal=str(job.terminatedSignal or ""),
            core_dumped=bool(job.hasCoreDump),
            aborted=bool(job.wasAborted),
            resource_usage={name: _number(value) for name, value in (job.resourceUsage or {}).items()},
        )

    def _reconcile(self) -> None:
        """Report workers the scheduler no longer knows although wait() never returned them."""
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        for tasks in list(self._unreaped.values()):
            for worker_id in list(tasks):
                try:
                    self.session.jobStatus(worker_id)
                except self.drmaa.errors.InvalidJobException:
                    log.info("worker %s vanished from Grid Engine without exit information", worker_id)
                    self._forget(worker_id)
                    _shared.owner.pop(worker_id, None)
                    self._mailbox.append(ExitInfo(worker_id, aborted=True))
                except self.drmaa.errors.DrmaaException:
                    return  # qmaster unreachable: try again later

    def _forget(self, worker_id: str) -> None:
        job = _job_of(worker_id)
        tasks = self._unreaped.get(job)
        if tasks is not None:
            tasks.discard(worker_id)
            if not tasks:
                del self._unreaped[job]

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """One control call per array job whose every remaining task goes, one per task otherwise.

        Each call is a round trip to qmaster (about 3 ms here), so removing a whole array of 1,000
        queued workers task by task would take seconds.
        """
        drmaa = self.drmaa
        requested = set(worker_ids)
        targets = []
        for job, tasks in self._unreaped.items():
            if tasks and tasks <= requested:
                targets.append(job)
                requested -= tasks
        targets.extend(sorted(requested))
        with _shared.lock:
            for target in targets:
                try:
                    self.session.control(target, drmaa.JobControlAction.TERMINATE)
                except drmaa.errors.DrmaaException as error:  # already gone, most often
                    log.debug("terminating %s: %s", target, error)

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Every job of an earlier client of the sweep goes whole: one call per array job."""
        jobs = sorted({_job_of(worker_id) for worker_id, _, _ in leftovers})
        with _shared.lock:
            for job in jobs:
                try:
                    self.session.control(job, self.drmaa.JobControlAction.TERMINATE)
                except self.drmaa.errors.DrmaaException as error:
                    log.debug("terminating %s: %s", job, error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        leftover = [worker_id for tasks in self._unreaped.values() for worker_id in tasks]
        self.terminate(leftover)
        with _shared.lock:
            for worker_id in leftover:
                _shared.owner.pop(worker_id, None)
        _shared.release()
