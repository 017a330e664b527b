"""Grid Engine's qmaster killed (SIGKILL) mid-sweep and started again about 20 s later, the way
ci/gridengine.sh starts it, on the multi-host cluster of ci/multihost.sh.

While qmaster is down the workers carry on over HTTP; what needs the scheduler (removing the
queued workers no longer needed, submitting a retry) waits for it and is done once it answers.
The sweep must not wait for Son of Grid Engine's stale "running" jobs: DRMAA jobs that ran across
the outage stay in state r (dr once removed) after the restart until their execd restarts, holding
no process. At the end every result is right and nothing of the sweep can start any more: no job
of the sweep is left queued, every one left is one the sweep asked to remove, and no worker
process is alive on any node. The stale jobs are then cleared as an administrator would (qdel -f).

These tests disturb every user of the cluster for the outage: qmaster is started again in a
``finally``, whatever happens.
"""
from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import (
    FREEZER,
    NODES,
    Cluster,
    MultihostSweep,
    brief,
    check_results,
    grid_engine_queues_known,
    left_in_qstat,
    multihost_nodes,
    runs,
    wait_until,
)

pytestmark = pytest.mark.multihost
OUTAGE = 20  # seconds qmaster stays dead
QMASTER_START = ["/etc/init.d/gridengine-master", "start"]  # as ci/gridengine.sh starts it
BACKEND_LOG = "sheepdog_drmaa.backends"  # drmaa.py and removals.py


def qmaster_pid() -> int:
    """sge_qmaster's pid, from the pid file in its spool directory (named in the cell's bootstrap file)."""
    bootstrap = pathlib.Path(os.environ.get("SGE_ROOT", "/var/lib/gridengine"), os.environ.get("SGE_CELL", "default"),
                             "common", "bootstrap").read_text()
    spool = next(line.split()[1] for line in bootstrap.splitlines() if line.startswith("qmaster_spool_dir"))
    pid = int(pathlib.Path(spool, "qmaster.pid").read_text())
    assert pathlib.Path(f"/proc/{pid}/comm").read_text().strip() == "sge_qmaster", pid
    return pid


def qmaster_answers() -> bool:
    try:
        return subprocess.run(["qstat"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class Qmaster:
    def kill(self) -> None:
        pid = qmaster_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "sge_qmaster to die")
        self.killed = time.time()

    def start(self) -> None:
        subprocess.run(QMASTER_START, check=True, capture_output=True, timeout=60)
        wait_until(qmaster_answers, 60, "qmaster to answer after its start")
        self.started = time.time()


@pytest.fixture
def qmaster(gridengine: Cluster) -> Iterator[Qmaster]:
    """Kills and starts qmaster on request; it is running again when the test ends, whatever happens,
    and every queue instance has heard from its execd again before the next test begins."""
    assert qmaster_answers(), "qmaster does not answer at the start of the test"
    master = Qmaster()
    try:
        yield master
    finally:
        if not qmaster_answers():
            master.start()
        wait_until(grid_engine_queues_known, 90, "every queue instance to hear from its execd after the restart")


@pytest.fixture
def restart_sweep(qmaster: Qmaster, store: str, tmp_path: pathlib.Path,
                  request: pytest.FixtureRequest) -> Iterator[MultihostSweep]:
    multihost_nodes()
    directory = tmp_path / "runs"
    directory.mkdir()
    sweep = MultihostSweep(directory, store, request.node.name.replace("[", "-").rstrip("]"))
    yield sweep
    if not qmaster_answers():  # a test that failed with qmaster down: its jobs can only be cleared once it is up
        qmaster.start()
    sweep.close()
    jobs = sweep.jobs()
    stale = left_in_qstat(jobs)
    if stale:  # Son of Grid Engine's stale jobs (see above): an administrator clears them
        print(f"\n[{request.node.name}] left in qstat, cleared with qdel -f: {brief(stale)}")
        subprocess.run(["qdel", "-f", *sorted(jobs)], capture_output=True)
    wait_until(lambda: not left_in_qstat(jobs), 60, f"the sweep's jobs {sorted(jobs)} to leave qstat")


def worker_processes() -> list[tuple[str, int]]:
    """Live sheepdog worker processes on the nodes (in their freezer groups)."""
    found: list[tuple[str, int]] = []
    for node in NODES:
        for pid in pathlib.Path(FREEZER + node, "cgroup.procs").read_text().split():
            try:
                if b"sheepdog_drmaa.worker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append((node, int(pid)))
            except OSError:
                pass
    return found


def started(directory: pathlib.Path, n_tasks: int) -> list[int]:
    return [index for index in range(n_tasks) if runs(directory, index)]


def check_nothing_can_start(sweep: MultihostSweep) -> None:
    """No job of the sweep queued, each one left asked to go (d), and no worker process left on a node."""
    lines = left_in_qstat(sweep.jobs())
    assert not [line for line in lines if "q" in line.split()[4]], f"queued jobs left: {brief(lines)}"
    assert all("d" in line.split()[4] for line in lines), f"jobs left that the sweep did not remove: {brief(lines)}"
    wait_until(lambda: not worker_processes(), 30, "every worker process on the nodes to be gone")


def test_leasing_workers_carry_on_while_qmaster_is_down_and_the_queued_ones_are_removed_once_it_is_back(
        restart_sweep: MultihostSweep, qmaster: Qmaster, caplog: pytest.LogCaptureFixture) -> None:
    n_tasks = 20  # 12 slots on the nodes: 8 workers stay queued
    began = time.time()
    with caplog.at_level(logging.INFO, logger="sheepdog_drmaa"):
        handle = restart_sweep.start(n_tasks)
        wait_until(lambda: len(started(restart_sweep.directory, n_tasks)) >= 12, 60, "the nodes' 12 slots to fill")
        qmaster.kill()
        restart_sweep.release()
        # Over HTTP alone: the running workers finish their tasks, then lease and run the others.
        wait_until(lambda: handle.status()["done"] == n_tasks, 60, "every task to be done while qmaster is down")
        done = time.time()
        assert not handle.wait(0), "the sweep returned while the removal of its queued workers was not done"
        time.sleep(max(0.0, qmaster.killed + OUTAGE - time.time()))  # the outage lasts OUTAGE s
        qmaster.start()
        assert handle.wait(150), "the sweep did not return within 150 s of qmaster's restart"
        returned = time.time()
    check_results(handle.results(), n_tasks, multihost_nodes())
    # Not waited for: the ends of the workers that ran across the outage (stale in qstat, see above).
    assert returned - qmaster.started < 30, "the sweep waited on something after qmaster was back"
    check_nothing_can_start(restart_sweep)
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith(BACKEND_LOG) and r.levelno == logging.WARNING and "cannot reach" in r.getMessage()]
    assert len(warnings) == 1 and "to remove" in warnings[0], warnings  # once per outage, not per call
    assert "answers again" in caplog.text and "waiting up to" in caplog.text
    print(f"\n[leasing] all {n_tasks} tasks done {done - qmaster.killed:.1f} s after qmaster was killed "
          f"(outage {qmaster.started - qmaster.killed:.1f} s); the sweep returned {returned - qmaster.started:.1f} s "
          f"after qmaster answered again, {returned - began:.1f} s after it began")


def test_one_task_per_worker_a_retry_is_submitted_once_qmaster_is_back(
        restart_sweep: MultihostSweep, qmaster: Qmaster, caplog: pytest.LogCaptureFixture) -> None:
    n_tasks = 6
    directory = restart_sweep.directory
    began = time.time()
    with caplog.at_level(logging.INFO, logger="sheepdog_drmaa"):
        handle = restart_sweep.start(n_tasks, tasks_per_worker=1)
        wait_until(lambda: len(started(directory, n_tasks)) == n_tasks, 60, "every task to start")
        qmaster.kill()
        # Task 0's worker dies while qmaster is down: its task is lost and needs a new worker.
        victim = int((directory / "0.runs").read_text().split()[1])
        os.kill(victim, signal.SIGKILL)
        restart_sweep.release()
        wait_until(lambda: [a.cause for a in handle.attempts(0)][:1] == ["lost"], 30, "task 0 to be declared lost")
        wait_until(lambda: handle.status()["done"] == n_tasks - 1, 30, "the other tasks to be done")
        time.sleep(max(0.0, qmaster.killed + OUTAGE - time.time()))
        qmaster.start()
        assert handle.wait(120), "the sweep did not end within 120 s of qmaster's restart"
        returned = time.time()
    results = handle.results()
    check_results(results, n_tasks, multihost_nodes())
    assert [a.cause for a in handle.attempts(0)] == ["lost", "result"], handle.attempts(0)
    retried = handle.attempts(0)[1]
    assert retried.started > qmaster.started, "the retry's worker started before qmaster was back"
    # Not waited for: the ends of the workers that ran across the outage, which this DRMAA session never
    # hears of (nor, on Son of Grid Engine 8.1.9, of the retry's, submitted after the restart).
    assert returned - qmaster.started < 60, "the sweep waited on something after qmaster was back"
    check_nothing_can_start(restart_sweep)
    print(f"\n[one task per worker] retry started {retried.started - qmaster.started:.1f} s after qmaster answered "
          f"again (outage {qmaster.started - qmaster.killed:.1f} s); the sweep returned "
          f"{returned - qmaster.started:.1f} s after, {returned - began:.1f} s after it began")


def test_a_sweep_whose_every_task_is_done_returns_within_outage_wait_while_qmaster_stays_down(
        restart_sweep: MultihostSweep, qmaster: Qmaster, caplog: pytest.LogCaptureFixture) -> None:
    n_tasks, outage_wait = 20, 10  # 12 slots on the nodes: 8 workers stay queued, and cannot be removed
    with caplog.at_level(logging.INFO, logger="sheepdog_drmaa"):
        handle = restart_sweep.start(n_tasks, outage_wait=outage_wait)
        wait_until(lambda: len(started(restart_sweep.directory, n_tasks)) >= 12, 60, "the nodes' 12 slots to fill")
        qmaster.kill()
        restart_sweep.release()
        wait_until(lambda: handle.status()["done"] == n_tasks, 60, "every task to be done while qmaster is down")
        done = time.time()
        assert handle.wait(outage_wait + 20), "a sweep with every task done did not return while qmaster was down"
        returned = time.time()
        assert not qmaster_answers()
    check_results(handle.results(), n_tasks, multihost_nodes())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "NOT removed" in errors[0] and "qdel" in errors[0], errors
    print(f"\n[qmaster stays down] the sweep returned {returned - done:.1f} s after its last task was done "
          f"(outage_wait={outage_wait})")
