"""Test helpers: waiting on a condition with a deadline, the real schedulers as the tests see them, and the
multi-host Grid Engine of ci/multihost.sh (its nodes, its queue, a sweep whose tasks block until released)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

import sheepdog_drmaa

if TYPE_CHECKING:  # not at run time: a worker imports this module for report_where_then_wait
    from sheepdog_drmaa.handle import Sweep

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def qstat_jobs() -> list[str]:
    """Lines of `qstat -u '*'` that name a job (empty when the cluster has no job)."""
    out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()[2:] if line.strip()]


def grid_engine_queues_known() -> bool:
    """Whether every queue instance has heard from its execd: after a qmaster restart they are in state
    u (unknown) until their execd reports again (up to a load report interval, 40 s), and jobs sent
    meanwhile can stay in state t for good."""
    out = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=10)
    instances = [line.split() for line in out.stdout.splitlines() if "@" in line.split(" ", 1)[0]]
    return out.returncode == 0 and bool(instances) and not any(
        len(fields) > 5 and "u" in fields[5] for fields in instances)


def clear_removed_jobs(jobs: Collection[str] | None = None) -> list[str]:
    """What an administrator does after a qmaster restart: ``qdel -f`` the jobs a sweep asked to remove
    (state d) that Son of Grid Engine goes on showing; returns the qstat lines cleared."""
    stale = [line for line in qstat_jobs() if "d" in line.split()[4] and (jobs is None or line.split()[0] in jobs)]
    if stale:
        subprocess.run(["qdel", "-f", *sorted({line.split()[0] for line in stale})], capture_output=True)
    return stale


def squeue_jobs() -> list[str]:
    """Lines of `squeue` that name a job of any user (empty when the cluster has no job)."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %t"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


class Cluster:
    """One real scheduler: its jobs, its queued workers, and deleting a worker from outside (qdel, scancel)."""

    def __init__(self, name: str) -> None:
        self.name = name  # "gridengine" or "slurm", as the backend's scheduler calls itself
        self.command = {"gridengine": "qstat", "slurm": "squeue"}[name]

    def __repr__(self) -> str:
        return f"Cluster({self.name!r})"

    def jobs(self) -> list[str]:
        """Lines naming a job still in the scheduler (empty when no job is left)."""
        return qstat_jobs() if self.name == "gridengine" else squeue_jobs()

    def array_of(self, worker_id: str) -> str:
        """The array job of a worker id ('49.3' -> '49', '238_4' -> '238')."""
        return re.split(r"[._]", worker_id, maxsplit=1)[0]

    def queued_workers(self) -> list[str]:
        """Worker ids of the tasks still waiting to start, in task order."""
        if self.name == "slurm":
            out = subprocess.run(["squeue", "--noheader", "--array", "--states=PENDING", "--format=%i"],
                                 capture_output=True, text=True, check=True).stdout
            ids = out.split()
        else:
            ids = []
            for fields in (line.split() for line in qstat_jobs() if " qw " in line):
                for tasks in fields[-1].split(","):  # ja-task-ID: "10", "3-10:1" or "9,10"
                    first, _, rest = tasks.partition("-")
                    last, _, step = rest.partition(":")
                    ids.extend(f"{fields[0]}.{task}" for task in range(int(first), int(last or first) + 1,
                                                                        int(step or 1)))
        return sorted(ids, key=lambda worker: [int(part) for part in re.split(r"[._]", worker)])

    def delete(self, worker_id: str) -> None:
        """Remove one worker (array task) from outside, as a user or an admin would."""
        if self.name == "slurm":
            command = ["scancel", worker_id]
        else:
            job, task = worker_id.split(".")
            command = ["qdel", job, "-t", task]
        subprocess.run(command, check=True, capture_output=True)

    def delete_array(self, worker_id: str) -> None:
        """Remove the whole array job a worker belongs to, from outside."""
        command = "scancel" if self.name == "slurm" else "qdel"
        subprocess.run([command, self.array_of(worker_id)], check=True, capture_output=True)


class BackendName(str):
    """A backend= value ("local" or "drmaa") that also says which scheduler answers it."""

    scheduler: str

    def __new__(cls, name: str, scheduler: str) -> BackendName:
        value = super().__new__(cls, name)
        value.scheduler = scheduler
        return value


# ------------------------------------------------------------------ the multi-host Grid Engine

IN_CI = os.environ.get("CI", "").lower() == "true"

REPO = pathlib.Path(__file__).resolve().parent.parent
MULTIHOST = REPO / "ci" / "multihost.sh"
NODES = os.environ.get("SHEEPDOG_TEST_NODES", "").split()
SUBMIT_ADDRESS = os.environ.get("SHEEPDOG_TEST_SUBMIT_ADDRESS", "")
QUEUE = os.environ.get("SHEEPDOG_TEST_NODE_QUEUE", "")
RESOURCE = os.environ.get("SHEEPDOG_TEST_NODE_RESOURCE", "")
FREEZER = os.environ.get("SHEEPDOG_TEST_NODE_FREEZER", "")
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 1.0, 5.0
RELEASE_BOUND = 90  # a task never blocks longer than this, whatever happens to the test


# -------------------------------------------------------------------------------- on the nodes


def report_where_then_wait(directory: str, index: int) -> tuple[int, str, str]:
    """Record where this execution runs, block until the test releases the tasks, return where it ran."""
    host = os.uname().nodename
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet: just the route's source
        probe.connect((os.environ["MULTIHOST_SUBMIT_ADDRESS"], 9))
        address = probe.getsockname()[0]
    base = pathlib.Path(directory)
    with open(base / f"{index}.runs", "a") as handle:
        handle.write(f"{host} {os.getpid()}\n")
    deadline = time.monotonic() + RELEASE_BOUND
    while not (base / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return index, host, address


def runs(directory: str | pathlib.Path, index: int) -> list[str]:
    """The hosts of every execution of task ``index`` so far, in order."""
    path = pathlib.Path(directory) / f"{index}.runs"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------- the cluster


def execd_answers(node: str) -> bool:
    try:
        return subprocess.run(["qping", "-info", node, "6445", "execd", "1"], capture_output=True,
                              timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def multihost_problem() -> str | None:
    if not NODES or not SUBMIT_ADDRESS or not QUEUE or not FREEZER:
        return ('SHEEPDOG_TEST_NODES and the other SHEEPDOG_TEST_NODE* variables are not set: run '
                '`eval "$(bash ci/multihost.sh)"` after ci/gridengine.sh')
    for node in NODES:
        if not os.path.isdir(FREEZER + node):
            return f"no freezer group {FREEZER + node} for {node}: run `bash ci/multihost.sh`"
        if not execd_answers(node):
            return f"the execd of {node} does not answer qping: run `bash ci/multihost.sh`"
    return None


def multihost_nodes() -> list[str]:
    """The multi-host cluster's node names; a failure in CI (CI=true) when it is missing, a skip otherwise."""
    problem = multihost_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the multi-host Grid Engine is required in CI but is not usable: {problem}")
        pytest.skip(f"the multi-host Grid Engine is not usable here: {problem}")
    return list(NODES)


def restore(node: str) -> None:
    """What an admin does when a node comes back: link up, thawed, a dead or unheard execd restarted."""
    subprocess.run(["bash", str(MULTIHOST), "restore", node], check=True, capture_output=True, text=True,
                   timeout=120)


def sweep_jobs(store: str, sweep_id: str) -> set[str]:
    """The array jobs of every worker the sweep ever submitted."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM workers WHERE sweep_id = ?", (sweep_id,))]
    return {re.split(r"[._]", worker, maxsplit=1)[0] for worker in ids}  # 12.3 (Grid Engine), 12_3 (Slurm)


def brief(lines: list[str]) -> str:
    """job.task state queue, from qstat lines."""
    shown = []
    for fields in (line.split() for line in lines):
        queue = fields[7] if len(fields) >= 10 else "-"
        shown.append(f"{fields[0]}.{fields[-1]} {fields[4]} {queue}")
    return "; ".join(shown) or "none"


def poll(predicate: Callable[[], object], timeout: float) -> bool:
    """Whether ``predicate`` becomes true within ``timeout`` seconds (no failure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def left_in_qstat(jobs: Collection[str], queue: str | None = None) -> list[str]:
    """The lines of `qstat` (of one queue, or all) that name one of ``jobs``."""
    out = subprocess.run(["qstat", "-u", "*", *(["-q", queue] if queue else [])], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines()[2:] if line.split() and line.split()[0] in jobs]


class MultihostSweep:
    """One sweep on the nodes' queue, its workers reaching the server only across the bridge."""

    def __init__(self, directory: pathlib.Path, store: str, name: str) -> None:
        self.directory, self.store, self.name = directory, store, name
        self.handle: Sweep | None = None

    def start(self, n_tasks: int, **options: Any) -> Sweep:
        """Start the sweep (map_async); ``options`` add to or override the ones here."""
        options = {"backend": "drmaa", "store": self.store, "name": self.name, "host": SUBMIT_ADDRESS,
                   "bind": SUBMIT_ADDRESS, "queue": QUEUE, "native_spec": RESOURCE,
                   "env": {"MULTIHOST_SUBMIT_ADDRESS": SUBMIT_ADDRESS}, "job_name": f"mh-{self.name}",
                   "heartbeat_interval": HEARTBEAT_INTERVAL, "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                   "progress": False, **options}
        self.handle = sheepdog_drmaa.map_async(
            report_where_then_wait, [(str(self.directory), index) for index in range(n_tasks)],
            **{name: value for name, value in options.items() if value is not None})
        return self.handle

    def all_started(self, n_tasks: int) -> bool:
        return all(runs(self.directory, index) for index in range(n_tasks))

    def release(self) -> None:
        (self.directory / "release").touch()

    def jobs(self) -> set[str]:
        return sweep_jobs(self.store, self.handle.id) if self.handle is not None else set()

    def close(self) -> None:
        """Release the tasks; cancel a sweep that has not ended (only after a failed test)."""
        self.release()
        if self.handle is not None and not self.handle.wait(30):
            self.handle.cancel(60)


def check_results(results: list[tuple[int, str, str]], n_tasks: int, nodes: Collection[str]) -> None:
    assert [result[0] for result in results] == list(range(n_tasks))
    for index, host, address in results:
        assert host in nodes, (index, host)
        assert address == f"{SUBMIT_ADDRESS.rsplit('.', 1)[0]}.{10 + int(host.removeprefix('node'))}", \
            (index, host, address)


def cli(store: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``sheepdog-drmaa ARGS --store STORE``, run from / (so that nothing depends on the test's directory)."""
    return subprocess.run([sys.executable, "-m", "sheepdog_drmaa", *args, "--store", store], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended and waiting to be reaped, does not)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def no_job_left(backend: BackendName, store: str, name: str) -> None:
    """Within 10 s, no job of sweep ``name`` is left in the scheduler (local workers have none)."""
    if backend == "local":
        return
    from sheepdog_drmaa.store import Store
    record = Store(store, readonly=True).sweep_named(name)
    assert record is not None
    arrays = sweep_jobs(store, record.id)
    cluster = Cluster(backend.scheduler)
    wait_until(lambda: not [line for line in cluster.jobs() if cluster.array_of(line.split()[0]) in arrays], 10,
               "the sweep's jobs to leave the scheduler")
