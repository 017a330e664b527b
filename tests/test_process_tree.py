"""A worker's whole process tree goes with it, and the local backend never loses a worker's ending.

Real processes: f leaves processes behind that left its session, and the test checks they are
gone once map() returns; workers end in ways the local backend once could not reap.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from helpers import BackendName, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import SweepFailed


def leave_processes_behind(directory: str) -> None:
    """Start two processes that escape f's process group: a setsid'd child and an orphaned daemon."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    daemon = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], start_new_session=True,
                            capture_output=True, text=True, check=True)
    with open(os.path.join(directory, "pids"), "a") as handle:
        handle.write(f"{child.pid}\n{daemon.stdout.strip()}\n")


def escape_then_overrun_the_first_time(directory: str, x: int) -> int:
    marker = os.path.join(directory, "ran")
    if not os.path.exists(marker):
        open(marker, "w").close()
        leave_processes_behind(directory)
        time.sleep(120)
    return x


def escape_or_wait(directory: str, what: str) -> str:
    if what == "escape":
        leave_processes_behind(directory)
    else:
        time.sleep(3)  # so that the sweep goes on after the other worker ended on its own
    return what


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which the test process does not own, is as good as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_all_gone(directory: str | pathlib.Path) -> None:
    with open(os.path.join(directory, "pids")) as handle:
        pids = [int(line) for line in handle.read().split()]
    assert len(pids) == 2
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the processes f left behind to go")
    except BaseException:  # pytest's failure: do not leave them running
        for pid in filter(alive, pids):
            os.kill(pid, signal.SIGKILL)
        raise


def native_spec(backend: BackendName) -> str | None:
    """Grid Engine's qdel is a SIGKILL of the job's process group; -notify sends SIGUSR2 first, which
    gives the worker the moment it needs to end the processes that left that group."""
    return "-notify" if backend.scheduler == "gridengine" else None


def test_processes_that_left_the_session_go_when_the_attempt_times_out(backend: BackendName, store: str,
                                                                       tmp_path: pathlib.Path) -> None:
    result = sheepdog_drmaa.map(escape_then_overrun_the_first_time, [(str(tmp_path), 5)], backend=backend,
                                store=store, progress=False, timeout=3, native_spec=native_spec(backend))
    assert result == [5]
    assert_all_gone(tmp_path)


def test_processes_that_left_the_session_go_when_the_worker_ends_on_its_own(backend: BackendName, store: str,
                                                                            tmp_path: pathlib.Path) -> None:
    items = [(str(tmp_path), "escape"), (str(tmp_path), "wait")]
    assert sheepdog_drmaa.map(escape_or_wait, items, backend=backend, store=store, progress=False,
                              tasks_per_worker=1) == ["escape", "wait"]
    assert_all_gone(tmp_path)


def kill_self_with_a_real_time_signal(x: int) -> None:
    os.kill(os.getpid(), signal.SIGRTMIN + 6)


def test_a_local_worker_killed_by_a_signal_without_a_name_is_reaped(store: str) -> None:
    handle = sheepdog_drmaa.map_async(kill_self_with_a_real_time_signal, [1], backend="local", store=store,
                                      progress=False, retries=0)
    assert handle.wait(30), "the sweep hung: the worker's ending was never recorded"
    with pytest.raises(SweepFailed) as caught:
        handle.results()
    assert caught.value.failures[0].cause == "signal"
    assert "Real-time signal 6" in caught.value.failures[0].summary


# Run in a process of its own: using up the descriptors of the test process would also starve the
# scheduler libraries loaded there (Son of Grid Engine's libdrmaa, failing to resolve qmaster's name
# while no descriptor was left, refused every later session of that process: seen in CI).
STARVED = """
import contextlib, logging, os, resource, sys, time
import sheepdog_drmaa
from sheepdog_drmaa import WorkersCannotStart

def exit_on_go(go, x):
    # Run until go exists, then end the worker without a report (so that no connection is needed).
    open(f"{go}.{x}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.05)
    os._exit(3)

store, go = sys.argv[1], sys.argv[2]
logging.basicConfig(level=logging.WARNING)
handle = sheepdog_drmaa.map_async(exit_on_go, [(go, x) for x in range(3)], backend="local", store=store,
                                  progress=False, workers=1)
deadline = time.monotonic() + 30
while not os.path.exists(f"{go}.0"):
    assert time.monotonic() < deadline, "the first task never ran"
    time.sleep(0.05)
open(go + ".tmp", "w").close()
started = time.monotonic()
# Use up the descriptors under a lowered soft limit; give them back afterwards.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
held = []
with contextlib.suppress(OSError):
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
os.rename(go + ".tmp", go)  # needs no descriptor; the worker exits, its replacement cannot start
ended = handle.wait(60)
for fd in held:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
assert ended, "the sweep hung after workers could not be started"
assert time.monotonic() - started < 30, time.monotonic() - started
try:
    handle.results()
except WorkersCannotStart as error:
    assert "before they could run a task" in str(error), error
else:
    raise AssertionError("the sweep did not end with WorkersCannotStart")
print("ended as expected")
"""


def test_local_workers_that_cannot_start_for_want_of_descriptors_end_the_sweep(store: str,
                                                                               tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-c", STARVED, store, str(tmp_path / "go")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "ended as expected" in result.stdout, result.stderr
    assert "Too many open files" in result.stderr, result.stderr
