"""Test helpers: waiting on a condition with a deadline, the real schedulers as the tests see them, and the
task the multi-host tests run on the nodes (it blocks until released; multihost_clusters.py has the clusters)."""
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
from typing import TypeVar

import pytest

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


# ------------------------------------------------------------------ the multi-host clusters

IN_CI = os.environ.get("CI", "").lower() == "true"

REPO = pathlib.Path(__file__).resolve().parent.parent
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
    """Within 30 s, no job of sweep ``name`` is left in the scheduler, but for jobs whose removal went
    through and that the scheduler still shows ending (Grid Engine: a state with d; Slurm: CG, completing),
    as a busy execution daemon may report them late. Local workers have no job."""
    if backend == "local":
        return
    from sheepdog_drmaa.store import Store
    record = Store(store, readonly=True).sweep_named(name)
    assert record is not None
    arrays = sweep_jobs(store, record.id)
    cluster = Cluster(backend.scheduler)

    def left() -> list[str]:
        return [line for line in cluster.jobs() if cluster.array_of(line.split()[0]) in arrays]
    if poll(lambda: not left(), 30):
        return
    state = 4 if cluster.name == "gridengine" else 1
    not_removed = [line for line in left() if not ("d" in line.split()[state] or line.split()[state] == "CG")]
    assert not not_removed, f"jobs of sweep {name} left in {cluster.command} 30 s after it ended: {brief(not_removed)}"


def drmaa_session_closed() -> bool:
    """Whether this process's DRMAA session has finished closing. After an outage it closes in the
    background (about a minute on Son of Grid Engine), and the next map waits for it only up to its own
    outage_wait: a test after an outage starts once it is closed, as a new process would."""
    from sheepdog_drmaa.backends.drmaa import _shared
    exiting = _shared.exiting
    return exiting is None or not exiting.is_alive()
