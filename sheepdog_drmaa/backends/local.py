"""Workers as local subprocesses, with exit information in the same form as DRMAA's.

For a machine without a cluster and for tests of everything above the scheduler. Like a
scheduler it runs at most ``slots`` workers at a time and keeps the rest queued.
"""
from __future__ import annotations

import collections
import itertools
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ..failures import ExitInfo
from . import Leftover, WorkerSpec, log_paths, worker_command
from .. import protocol


class LocalBackend:
    name = "local"
    max_array_size = 1_000_000

    def __init__(self, slots: Optional[int] = None) -> None:
        self.slots = slots or max(os.cpu_count() or 1, 2)
        self._queued: Deque[Tuple[str, WorkerSpec]] = collections.deque()
        self._running: Dict[str, int] = {}
        self._exits: "queue.Queue[ExitInfo]" = queue.Queue()
        self._counter = itertools.count(1)
        self._prefix = f"local{os.getpid()}-{int(time.time() * 1000) % 100000}"

    def submit(self, count: int, spec: WorkerSpec) -> List[str]:
        batch = next(self._counter)
        ids = [f"{self._prefix}.{batch}.{i}" for i in range(1, count + 1)]
        self._queued.extend((worker_id, spec) for worker_id in ids)
        self._start_queued()
        return ids

    def _start_queued(self) -> None:
        while self._queued and len(self._running) < self.slots:
            worker_id, spec = self._queued.popleft()
            paths = log_paths(spec, worker_id)
            environment = dict(os.environ, **spec.environment)
            environment[protocol.ENV_WORKER_ID] = worker_id
            with open(paths["stdout"], "wb") as out, open(paths["stderr"], "wb") as err:
                try:
                    process = subprocess.Popen(worker_command(spec), cwd=spec.working_directory, env=environment,
                                               stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                               start_new_session=True)
                except OSError as error:
                    err.write(f"cannot start worker: {error}\n".encode())
                    self._exits.put(ExitInfo(worker_id, exited=True, exit_status=127))
                    continue
            self._running[worker_id] = process.pid
            threading.Thread(target=self._reap, args=(worker_id, process), daemon=True).start()

    def _reap(self, worker_id: str, process: subprocess.Popen) -> None:
        started = time.time()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        resource_usage = {"ru_wallclock": time.time() - started, "ru_utime": usage.ru_utime,
                          "ru_stime": usage.ru_stime, "ru_maxrss": usage.ru_maxrss}
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            info = ExitInfo(worker_id, signaled=True, signal=signal.Signals(signum).name,
                            core_dumped=os.WCOREDUMP(status), resource_usage=resource_usage)
        else:
            info = ExitInfo(worker_id, exited=True, exit_status=os.WEXITSTATUS(status), resource_usage=resource_usage)
        self._exits.put(info)

    def wait_any(self, timeout: float) -> Optional[ExitInfo]:
        self._start_queued()
        try:
            info = self._exits.get(timeout=timeout) if timeout > 0 else self._exits.get_nowait()
        except queue.Empty:
            return None
        self._running.pop(info.worker, None)
        self._start_queued()
        return info

    def terminate(self, worker_ids: Sequence[str]) -> None:
        doomed = set(worker_ids)
        still_queued: Deque[Tuple[str, WorkerSpec]] = collections.deque()
        for worker_id, spec in self._queued:
            if worker_id in doomed:
                self._exits.put(ExitInfo(worker_id, aborted=True))
            else:
                still_queued.append((worker_id, spec))
        self._queued = still_queued
        for worker_id in doomed:
            pid = self._running.get(worker_id)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Kill the process groups of an earlier client's workers on this host (checked to be workers)."""
        here = os.uname().nodename
        for _, host, group in leftovers:
            if host != here or not group:
                continue
            try:
                with open(f"/proc/{group}/cmdline", "rb") as handle:
                    if b"sheepdog_drmaa.worker" not in handle.read():
                        continue  # the number now belongs to another process
                os.killpg(group, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def close(self) -> None:
        self.terminate(list(self._running) + [worker_id for worker_id, _ in self._queued])
