"""Workers as local subprocesses, with exit information in the same form as DRMAA's.

For a machine without a cluster and for tests of everything above the scheduler. Like a
scheduler it runs at most ``slots`` workers at a time and keeps the rest queued.

There is no thread to die: the caller's thread starts workers and polls them with
``wait4(WNOHANG)``, and any error while starting or reaping one becomes that worker's ending,
so its slot is always freed.

A worker's processes are tracked as Grid Engine tracks a job's by its additional group id: every
one of them carries ``SHEEPDOG_WORKER_ID=<id>`` in its environment, which survives fork, setsid
and setpgid. When a worker ends or is terminated, its process group and then every process on
this host that carries its tag are killed, so f's children go with it even if they left its
session. (A process that also drops its environment escapes that search; the worker's own
clean-up, see ``worker.supervisor.main``, still ends it when the worker exits on its own.)
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from .. import protocol
from ..model import ExitInfo
from . import Leftover, WorkerSpec, log_paths, worker_command

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005  # how long an ended worker may wait to be noticed; ~1% of a core while idle
KILL_SECONDS = 5.0  # how long to keep killing a worker's tagged processes before giving up


class LocalBackend:
    name = "local"
    max_array_size = 1_000_000

    def __init__(self, slots: int | None = None) -> None:
        self.slots = slots or max(os.cpu_count() or 1, 2)
        self._queued: collections.deque[tuple[str, WorkerSpec]] = collections.deque()
        self._running: dict[str, tuple[subprocess.Popen[bytes], WorkerSpec, float]] = {}
        self._endings: collections.deque[ExitInfo] = collections.deque()  # decided without a process to reap
        self._counter = itertools.count(1)
        self._prefix = f"local{os.getpid()}-{int(time.time() * 1000) % 100000}"

    def submit(self, count: int, spec: WorkerSpec) -> list[str]:
        batch = next(self._counter)
        ids = [f"{self._prefix}.{batch}.{i}" for i in range(1, count + 1)]
        self._queued.extend((worker_id, spec) for worker_id in ids)
        self._start_queued()
        return ids

    def _start_queued(self) -> None:
        while self._queued and len(self._running) < self.slots:
            worker_id, spec = self._queued.popleft()
            self._start(worker_id, spec)

    def _start(self, worker_id: str, spec: WorkerSpec) -> None:
        """Start one worker; if that fails (no descriptors left, say) record its ending instead."""
        paths, command = log_paths(spec, worker_id), worker_command(spec)
        try:
            environment = dict(os.environ, **spec.environment)
            environment[protocol.ENV_WORKER_ID] = worker_id  # the tag that finds all its processes
            with open(paths["stdout"], "wb") as out, open(paths["stderr"], "wb") as err:
                process = subprocess.Popen(command, cwd=spec.working_directory, env=environment,
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        except Exception as error:
            # As a shell would: 127 when the interpreter cannot be run; otherwise it never started.
            missing = isinstance(error, OSError) and error.filename == command[0]
            self._endings.append(ExitInfo(worker_id, exited=True, exit_status=127) if missing
                                 else ExitInfo(worker_id, aborted=True))
            _note(paths["stderr"], f"cannot start worker {worker_id}: {error}")
            return
        self._running[worker_id] = (process, spec, time.time())

    def check_request(self, spec: WorkerSpec) -> None:
        """Local workers take no scheduler options: nothing to refuse (a walltime still guides leasing)."""

    def running_hosts(self) -> dict[str, str | None]:
        """Every worker started and not yet reaped; all run on this host."""
        here = os.uname().nodename
        return {worker_id: here for worker_id in self._running}

    def execution_hosts(self, spec: WorkerSpec) -> list[str] | None:
        """None but this machine: workers reach the server at this machine's own name, loopback or not."""
        return []

    def wait_any(self, timeout: float) -> ExitInfo | None:
        deadline = time.monotonic() + timeout
        while True:
            self._start_queued()
            info = self._endings.popleft() if self._endings else self._reap_one()
            if info is not None:
                self._start_queued()
                return info
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(POLL_SECONDS, left))

    def _reap_one(self) -> ExitInfo | None:
        """The ending of one worker whose process has exited, once its leftover processes are killed."""
        for worker_id, (process, spec, started) in list(self._running.items()):
            try:
                info = _poll(worker_id, process, started)
            except Exception as error:  # e.g. reaped by someone else in this process: its status is lost
                _note(log_paths(spec, worker_id)["stderr"], f"cannot reap worker {worker_id}: {error}")
                process.returncode = -1  # so that Popen never waits for a pid that is no longer ours
                info = ExitInfo(worker_id)
            if info is not None:
                del self._running[worker_id]
                kill_tagged(worker_id)
                return info
        return None

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """Queued workers end as aborted; running ones lose their process group and tagged processes."""
        doomed = set(worker_ids)
        still_queued: collections.deque[tuple[str, WorkerSpec]] = collections.deque()
        for worker_id, spec in self._queued:
            if worker_id in doomed:
                self._endings.append(ExitInfo(worker_id, aborted=True))
            else:
                still_queued.append((worker_id, spec))
        self._queued = still_queued
        for worker_id in doomed:
            if worker_id in self._running:
                # Not reaped yet, so its pid (and process group id) cannot belong to another process.
                _kill_group(self._running[worker_id][0].pid)
                kill_tagged(worker_id)

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Kill an earlier client's workers on this host: process groups checked to be workers', tagged processes."""
        here = os.uname().nodename
        for worker_id, host, group in leftovers:
            if host not in (here, None):
                continue
            if group:
                try:
                    with open(f"/proc/{group}/cmdline", "rb") as handle:
                        if b"sheepdog_drmaa.worker" in handle.read():  # else the number is another process's now
                            _kill_group(group)
                except OSError:
                    pass
            kill_tagged(worker_id)

    def close(self) -> None:
        """Terminate every worker, then reap them (bounded) so that none is left a zombie of this process."""
        self.terminate(list(self._running) + [worker_id for worker_id, _ in self._queued])
        deadline = time.monotonic() + KILL_SECONDS
        while self._running and time.monotonic() < deadline:
            if self._reap_one() is None:
                time.sleep(POLL_SECONDS)


def _poll(worker_id: str, process: subprocess.Popen[bytes], started: float) -> ExitInfo | None:
    """The exit information of a worker process that has ended, or None while it runs."""
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    resource_usage = {"ru_wallclock": time.time() - started, "ru_utime": usage.ru_utime,
                      "ru_stime": usage.ru_stime, "ru_maxrss": usage.ru_maxrss}
    if os.WIFSIGNALED(status):
        return ExitInfo(worker_id, signaled=True, signal=_signal_name(os.WTERMSIG(status)),
                        core_dumped=os.WCOREDUMP(status), resource_usage=resource_usage)
    return ExitInfo(worker_id, exited=True, exit_status=os.WEXITSTATUS(status), resource_usage=resource_usage)


def _signal_name(signum: int) -> str:
    """SIGKILL, say; real-time signals have no such name ("Real-time signal 6")."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return signal.strsignal(signum) or f"signal {signum}"


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:  # gone already
        pass


def _note(path: str, text: str) -> None:
    """Tell the user why a worker ended without running: in the client's log and, if possible, its stderr file."""
    log.warning("%s", text)
    try:
        with open(path, "a") as handle:
            handle.write(text + "\n")
    except OSError:
        pass


def kill_tagged(worker_id: str) -> None:
    """SIGKILL every process on this host whose environment names ``worker_id``, until none is left.

    Processes this user may not read, and zombies (which have no environment), are skipped. Gives
    up after KILL_SECONDS (a process stuck in the kernel cannot be killed sooner).
    """
    tag = f"\0{protocol.ENV_WORKER_ID}={worker_id}\0".encode()
    deadline = time.monotonic() + KILL_SECONDS
    while True:
        try:
            found = [pid for pid in _pids() if tag in _environment(pid)]
        except FileNotFoundError:
            return  # no /proc (not Linux): the process group is all there is to kill
        except OSError as error:  # no descriptor left to read /proc with, say
            log.warning("cannot look for processes left by worker %s: %s", worker_id, error)
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return
        time.sleep(POLL_SECONDS)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environment(pid: int) -> bytes:
    """The NUL-separated environment ``pid`` started with, NUL-framed; empty when it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return b"\0" + handle.read()
    except (PermissionError, ProcessLookupError, FileNotFoundError):
        return b""
