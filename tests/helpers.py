"""Test helpers: waiting on a condition with a deadline, and the real schedulers as the tests see them."""
import re
import subprocess
import time

import pytest


def wait_until(predicate, timeout, what):
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def qstat_jobs():
    """Lines of `qstat -u '*'` that name a job (empty when the cluster has no job)."""
    out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()[2:] if line.strip()]


def squeue_jobs():
    """Lines of `squeue` that name a job of any user (empty when the cluster has no job)."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %t"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


class Cluster:
    """One real scheduler: its jobs, its queued workers, and deleting a worker from outside (qdel, scancel)."""

    def __init__(self, name):
        self.name = name  # "gridengine" or "slurm", as the backend's scheduler calls itself
        self.command = {"gridengine": "qstat", "slurm": "squeue"}[name]

    def __repr__(self):
        return f"Cluster({self.name!r})"

    def jobs(self):
        """Lines naming a job still in the scheduler (empty when no job is left)."""
        return qstat_jobs() if self.name == "gridengine" else squeue_jobs()

    def array_of(self, worker_id):
        """The array job of a worker id ('49.3' -> '49', '238_4' -> '238')."""
        return re.split(r"[._]", worker_id, maxsplit=1)[0]

    def queued_workers(self):
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

    def delete(self, worker_id):
        """Remove one worker (array task) from outside, as a user or an admin would."""
        if self.name == "slurm":
            command = ["scancel", worker_id]
        else:
            job, task = worker_id.split(".")
            command = ["qdel", job, "-t", task]
        subprocess.run(command, check=True, capture_output=True)

    def delete_array(self, worker_id):
        """Remove the whole array job a worker belongs to, from outside."""
        command = "scancel" if self.name == "slurm" else "qdel"
        subprocess.run([command, self.array_of(worker_id)], check=True, capture_output=True)


class BackendName(str):
    """A backend= value ("local" or "drmaa") that also says which scheduler answers it."""

    def __new__(cls, name, scheduler):
        value = super().__new__(cls, name)
        value.scheduler = scheduler
        return value
