"""Sweeps on the multi-host Grid Engine of ci/multihost.sh: three execution hosts (node1..node3), each a
network namespace on a bridge with the submit host at SHEEPDOG_TEST_SUBMIT_ADDRESS, and a queue of
their own that takes only jobs asking for the forced resource.

Bring-up: ``eval "$(bash ci/gridengine.sh)"`` then ``eval "$(bash ci/multihost.sh)"``. Every test
restores its node (``bash ci/multihost.sh restore NODE``, as an admin would) in a ``finally`` and
then checks that the test's jobs leave ``qstat``, so the next test starts on three healthy nodes.

The tasks block until the test releases them (a file), so the test decides when they end instead
of guessing how long a task must last; executions are recorded in files, so a retry is seen.
"""
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import time

import pytest
from helpers import wait_until

import sheepdog_drmaa

pytestmark = pytest.mark.multihost
IN_CI = os.environ.get("CI", "").lower() == "true"

REPO = pathlib.Path(__file__).resolve().parent.parent
MULTIHOST = REPO / "ci" / "multihost.sh"
NODES = os.environ.get("SHEEPDOG_TEST_NODES", "").split()
SUBMIT_ADDRESS = os.environ.get("SHEEPDOG_TEST_SUBMIT_ADDRESS", "")
QUEUE = os.environ.get("SHEEPDOG_TEST_NODE_QUEUE", "")
RESOURCE = os.environ.get("SHEEPDOG_TEST_NODE_RESOURCE", "")
FREEZER = os.environ.get("SHEEPDOG_TEST_NODE_FREEZER", "")
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 1.0, 5.0
ON_THEIR_OWN = 20  # seconds the dead node's jobs get to leave qstat by themselves once it is back
RELEASE_BOUND = 90  # a task never blocks longer than this, whatever happens to the test


# -------------------------------------------------------------------------------- on the nodes


def report_where_then_wait(directory, index):
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


def runs(directory, index):
    """The hosts of every execution of task ``index`` so far, in order."""
    path = pathlib.Path(directory) / f"{index}.runs"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------- the cluster


def execd_answers(node):
    try:
        return subprocess.run(["qping", "-info", node, "6445", "execd", "1"], capture_output=True,
                              timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def multihost_problem():
    if not NODES or not SUBMIT_ADDRESS or not QUEUE or not FREEZER:
        return ('SHEEPDOG_TEST_NODES and the other SHEEPDOG_TEST_NODE* variables are not set: run '
                '`eval "$(bash ci/multihost.sh)"` after ci/gridengine.sh')
    for node in NODES:
        if not os.path.isdir(FREEZER + node):
            return f"no freezer group {FREEZER + node} for {node}: run `bash ci/multihost.sh`"
        if not execd_answers(node):
            return f"the execd of {node} does not answer qping: run `bash ci/multihost.sh`"
    return None


@pytest.fixture(scope="module")
def nodes(gridengine):
    """The multi-host cluster; a failure in CI (CI=true) when it is missing, a skip otherwise."""
    problem = multihost_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the multi-host Grid Engine is required in CI but is not usable: {problem}")
        pytest.skip(f"the multi-host Grid Engine is not usable here: {problem}")
    return list(NODES)


def restore(node):
    """What an admin does when a node comes back: link up, thawed, a dead or unheard execd restarted."""
    subprocess.run(["bash", str(MULTIHOST), "restore", node], check=True, capture_output=True, text=True,
                   timeout=120)


def sweep_jobs(store, sweep_id):
    """The array jobs of every worker the sweep ever submitted."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM workers WHERE sweep_id = ?", (sweep_id,))]
    return {worker.split(".")[0] for worker in ids}


def brief(lines):
    """job.task state queue, from qstat lines."""
    shown = []
    for fields in (line.split() for line in lines):
        queue = fields[7] if len(fields) >= 10 else "-"
        shown.append(f"{fields[0]}.{fields[-1]} {fields[4]} {queue}")
    return "; ".join(shown) or "none"


def poll(predicate, timeout):
    """Whether ``predicate`` becomes true within ``timeout`` seconds (no failure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def left_in_qstat(jobs, queue=None):
    """The lines of `qstat` (of one queue, or all) that name one of ``jobs``."""
    out = subprocess.run(["qstat", "-u", "*", *(["-q", queue] if queue else [])], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines()[2:] if line.split() and line.split()[0] in jobs]


def freezer(node, name):
    return pathlib.Path(FREEZER + node) / name


def node_pids(node):
    return [int(pid) for pid in freezer(node, "cgroup.procs").read_text().split()]


def cut_link(node):
    subprocess.run(["ip", "link", "set", f"veth-{node}", "down"], check=True)


def freeze(node):
    freezer(node, "freezer.state").write_text("FROZEN")
    wait_until(lambda: freezer(node, "freezer.state").read_text().strip() == "FROZEN", 10, f"{node} to freeze")


def kill_all(node):
    # Frozen first, so that no process forks past the kill; SIGKILL is delivered on thawing.
    freeze(node)
    for pid in node_pids(node):
        os.kill(pid, signal.SIGKILL)
    freezer(node, "freezer.state").write_text("THAWED")
    wait_until(lambda: not node_pids(node), 10, f"every process of {node} to die")


def kill_execd(node):
    [execd] = [pid for pid in node_pids(node) if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() == "sge_execd"]
    os.kill(execd, signal.SIGKILL)
    wait_until(lambda: execd not in node_pids(node), 10, f"the execd of {node} to die")


FAULTS = {"link_down": cut_link, "frozen": freeze, "all_killed": kill_all, "execd_killed": kill_execd}


class MultihostSweep:
    """One sweep on the nodes' queue, its workers reaching the server only across the bridge."""

    def __init__(self, directory, store, name):
        self.directory, self.store, self.name = directory, store, name
        self.handle = None

    def start(self, n_tasks):
        self.handle = sheepdog_drmaa.map_async(
            report_where_then_wait, [(str(self.directory), index) for index in range(n_tasks)], backend="drmaa",
            store=self.store, name=self.name, host=SUBMIT_ADDRESS, bind=SUBMIT_ADDRESS, queue=QUEUE,
            native_spec=RESOURCE, env={"MULTIHOST_SUBMIT_ADDRESS": SUBMIT_ADDRESS}, job_name=f"mh-{self.name}",
            heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT, progress=False)
        return self.handle

    def all_started(self, n_tasks):
        return all(runs(self.directory, index) for index in range(n_tasks))

    def release(self):
        (self.directory / "release").touch()

    def jobs(self):
        return sweep_jobs(self.store, self.handle.id) if self.handle is not None else set()

    def close(self):
        """Release the tasks; cancel a sweep that has not ended (only after a failed test)."""
        self.release()
        if self.handle is not None and not self.handle.wait(30):
            self.handle.cancel(60)


@pytest.fixture
def multihost_sweep(nodes, store, tmp_path, request):
    for node in nodes:  # the previous test restored its node
        assert execd_answers(node), f"{node} is not healthy at the start of the test"
    directory = tmp_path / "runs"
    directory.mkdir()
    sweep = MultihostSweep(directory, store, request.node.name.replace("[", "-").rstrip("]"))
    yield sweep
    sweep.close()


def check_results(results, n_tasks, nodes):
    assert [result[0] for result in results] == list(range(n_tasks))
    for index, host, address in results:
        assert host in nodes, (index, host)
        assert address == f"{SUBMIT_ADDRESS.rsplit('.', 1)[0]}.{10 + int(host.removeprefix('node'))}", \
            (index, host, address)


# ---------------------------------------------------------------------------------------- tests


def test_a_sweep_spreads_over_the_hosts_and_records_each_attempts_host(nodes, multihost_sweep):
    n_tasks = 9
    handle = multihost_sweep.start(n_tasks)
    try:
        wait_until(lambda: multihost_sweep.all_started(n_tasks), 60, "every task to start")
        multihost_sweep.release()
        assert handle.wait(60), "the sweep did not end within 60 s of its release"
        results = handle.results()
        check_results(results, n_tasks, nodes)
        assert {host for _, host, _ in results} == set(nodes), results

        attempts = sheepdog_drmaa.Sweep.open(multihost_sweep.name, store=multihost_sweep.store).attempts()
        assert [(a.task, a.cause) for a in attempts] == [(index, "result") for index in range(n_tasks)]
        for attempt, (index, host, _) in zip(attempts, results):
            assert attempt.host == host == runs(multihost_sweep.directory, index)[0], (attempt, host)
    finally:
        multihost_sweep.close()
        jobs = multihost_sweep.jobs()
        wait_until(lambda: not left_in_qstat(jobs), 60, f"the sweep's jobs {sorted(jobs)} to leave qstat")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_node_cut_off_mid_task_loses_its_tasks_and_they_are_retried_elsewhere(nodes, multihost_sweep, fault):
    n_tasks = 6
    directory = multihost_sweep.directory
    handle = multihost_sweep.start(n_tasks)
    dead = None
    timings = {}
    try:
        wait_until(lambda: multihost_sweep.all_started(n_tasks), 60, "every task to start")
        dead = runs(directory, 0)[0]
        on_dead = [index for index in range(n_tasks) if runs(directory, index)[0] == dead]
        hosts = [runs(directory, index)[0] for index in range(n_tasks)]
        print(f"\n[{fault}] tasks on {dead}: {on_dead}; hosts: {hosts}")
        assert len(set(hosts)) > 1, f"every task runs on {dead}: no other host to retry on"
        killed = time.time()
        FAULTS[fault](dead)

        if fault == "execd_killed":
            # The workers talk to the server over HTTP, not through execd: over twice the heartbeat
            # timeout without execd, nothing is written off.
            window = time.monotonic() + 2 * HEARTBEAT_TIMEOUT
            while time.monotonic() < window:
                assert not [a for a in handle.attempts() if a.cause == "lost"], handle.attempts()
                time.sleep(0.2)
        else:
            def lost():
                return [a for a in handle.attempts() if a.cause == "lost"]
            wait_until(lambda: len(lost()) >= len(on_dead), 4 * HEARTBEAT_TIMEOUT + 10,
                       f"the tasks {on_dead} of {dead} to be declared lost")
            timings["detection"] = max(a.ended for a in lost()) - killed
            assert timings["detection"] >= HEARTBEAT_TIMEOUT - 2 * HEARTBEAT_INTERVAL, timings
        multihost_sweep.release()
        assert handle.wait(90), "the sweep did not end within 90 s of its release"
        timings["sweep ended"] = time.time() - killed
        if fault != "execd_killed":
            # The sweep did not wait for Grid Engine, which still shows the dead node's jobs.
            assert timings["sweep ended"] < 4 * HEARTBEAT_TIMEOUT, timings
            assert left_in_qstat(multihost_sweep.jobs(), queue=f"{QUEUE}@{dead}"), f"no job left on {dead}"
        results = handle.results()
        timings["recovery"] = max(a.ended for a in handle.attempts()) - killed

        check_results(results, n_tasks, nodes)
        for index in range(n_tasks):
            attempts = handle.attempts(index)
            if fault != "execd_killed" and index in on_dead:
                assert [a.cause for a in attempts] == ["lost", "result"], (index, attempts)
                assert attempts[0].host == dead and attempts[1].host != dead, (index, attempts)
                assert results[index][1] != dead
            else:
                assert [a.cause for a in attempts] == ["result"], (index, attempts)
                assert attempts[0].host == results[index][1] == runs(directory, index)[0], (index, attempts)
        print(f"[{fault}] " + ", ".join(f"{what} {seconds:.1f} s after the fault"
                                        for what, seconds in timings.items()))
    finally:
        multihost_sweep.close()
        jobs = multihost_sweep.jobs()
        if dead is not None:
            stale = left_in_qstat(jobs)
            restoring = time.time()
            restore(dead)
            restored = time.time()
            print(f"[{fault}] the sweep's jobs in qstat when it ended: {brief(stale)}; {dead} restored in "
                  f"{restored - restoring:.1f} s")
            if not poll(lambda: not left_in_qstat(jobs), ON_THEIR_OWN):
                # Seen with a replacement worker that Grid Engine dispatched onto the dead node (state t,
                # deleted by the sweep: dt): Grid Engine clears it only about 60 s after the node's execd
                # is back. The sweep already deleted it; an admin forces the deletion.
                stuck = left_in_qstat(jobs)
                assert all("d" in line.split()[4] for line in stuck), f"not deleted by the sweep: {brief(stuck)}"
                print(f"[{fault}] still in qstat {ON_THEIR_OWN} s after {dead} came back, so qdel -f: {brief(stuck)}")
                subprocess.run(["qdel", "-f", *sorted({line.split()[0] for line in stuck})], capture_output=True)
            wait_until(lambda: not left_in_qstat(jobs), 30,
                       f"the sweep's jobs {sorted(jobs)} to leave qstat after {dead} came back")
            print(f"[{fault}] the sweep's jobs left qstat {time.time() - restored:.1f} s after {dead} came back")
        else:
            wait_until(lambda: not left_in_qstat(jobs), 60, f"the sweep's jobs {sorted(jobs)} to leave qstat")
