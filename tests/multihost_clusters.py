"""The two multi-host clusters on this one machine, as the multi-host tests see them, and a sweep on one.

- Grid Engine: ci/multihost.sh, nodes node1..node3 (execd), queue nodes.q, for jobs asking ``-l multihost=1``.
- Slurm: ci/slurm-multihost.sh, nodes snode1..snode3 (slurmd), partition ``multi``.

Each node is a network namespace on a bridge of its own, with its processes in a cgroup-v1 freezer group.
One class per scheduler holds what differs: its nodes, the submit address, the options that send a sweep
there, how the sweep's jobs are listed, the node daemon, how a node is restored and how the controller is
killed and started. A test takes ``multihost``, parametrized over both, each under its scheduler's mark
(one pytest process loads one libdrmaa: ci/test.sh runs Grid Engine's with ``-m "not slurm"``, Slurm's
with ``-m slurm``).
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from helpers import (
    IN_CI,
    REPO,
    grid_engine_queues_known,
    report_where_then_wait,
    runs,
    sweep_jobs,
    wait_until,
)

import sheepdog_drmaa

if TYPE_CHECKING:
    from sheepdog_drmaa.handle import Sweep

HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 1.0, 5.0
MULTIHOST = [pytest.param("gridengine", marks=pytest.mark.gridengine),
             pytest.param("slurm", marks=pytest.mark.slurm)]


@dataclass(frozen=True)
class Listed:
    """One array task of a sweep as the scheduler lists it."""

    job: str  # the array job
    task: str  # its task(s): '3', or Grid Engine's '3-10:1' for queued ones
    state: str  # as the scheduler spells it: qw, r, t, dr (Grid Engine); PD, R, CG (Slurm)
    node: str | None  # where it runs (None while queued)

    def __str__(self) -> str:
        return f"{self.job}.{self.task} {self.state} {self.node or '-'}"


def brief(listed: Collection[Listed]) -> str:
    return "; ".join(str(entry) for entry in listed) or "none"


def answers(command: list[str], expect: str = "") -> bool:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and expect in result.stdout


class NodeCluster:
    """A three-node cluster of network namespaces; a subclass per scheduler."""

    name: str
    script: str  # the bring-up script, in ci/
    daemon: str  # the node daemon's process name
    variables: dict[str, str]  # what the script exports -> attribute
    controller_name: str
    remove_command: str  # the scheduler's own command that removes a job, as the library names it

    def __init__(self) -> None:
        self.nodes = os.environ.get(self.variables["nodes"], "").split()
        self.submit_address = os.environ.get(self.variables["submit_address"], "")
        self.freezer_prefix = os.environ.get(self.variables["freezer"], "")
        self.queue = os.environ.get(self.variables["queue"], "")
        self.controller_started = self.controller_killed = self.save_waited = self.controller_start_asked = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.nodes})"

    # -------------------------------------------------------------------- the nodes

    def problem(self) -> str | None:
        if not self.nodes or not self.submit_address or not self.queue or not self.freezer_prefix:
            return (f"{self.variables['nodes']} and the other variables of ci/{self.script} are not set: run "
                    f'`eval "$(bash ci/{self.script})"`')
        for node in self.nodes:
            if not self.freezer(node).is_dir():
                return f"no freezer group {self.freezer(node)} for {node}: run `bash ci/{self.script}`"
            if not self.daemon_answers(node):
                return f"the {self.daemon} of {node} does not answer: run `bash ci/{self.script}`"
        return None

    def usable(self) -> list[str]:
        """The node names; a failure in CI (CI=true) when the cluster is missing, a skip otherwise."""
        problem = self.problem()
        if problem is not None:
            if IN_CI:
                pytest.fail(f"the multi-host {self.name} is required in CI but is not usable: {problem}")
            pytest.skip(f"the multi-host {self.name} is not usable here: {problem}")
        return list(self.nodes)

    def freezer(self, node: str, name: str = "") -> pathlib.Path:
        return pathlib.Path(self.freezer_prefix + node) / name

    def node_pids(self, node: str) -> list[int]:
        return [int(pid) for pid in self.freezer(node, "cgroup.procs").read_text().split()]

    def daemon_pid(self, node: str) -> int:
        [pid] = [pid for pid in self.node_pids(node) if comm(pid) == self.daemon]
        return pid

    def address_of(self, host: str) -> str:
        """The address node ``host`` has on the bridge (the nodes are .11, .12, .13)."""
        return f"{self.submit_address.rsplit('.', 1)[0]}.{10 + int(re.sub(r'^[a-z]+', '', host))}"

    def restore(self, node: str) -> None:
        """What an admin does when a node comes back: link up, thawed, a dead or unheard daemon restarted."""
        subprocess.run(["bash", str(REPO / "ci" / self.script), "restore", node], check=True, capture_output=True,
                       text=True, timeout=150)

    def worker_processes(self) -> list[tuple[str, int]]:
        """Live sheepdog worker processes on the nodes (in their freezer groups)."""
        found: list[tuple[str, int]] = []
        for node in self.nodes:
            for pid in self.node_pids(node):
                try:
                    if b"sheepdog_drmaa.worker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append((node, pid))
                except OSError:
                    pass
        return found

    # ------------------------------------------------------------ per scheduler

    def daemon_answers(self, node: str) -> bool:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """map_async options that send a sweep to the nodes."""
        raise NotImplementedError

    def listed(self, jobs: Collection[str], node: str | None = None) -> list[Listed]:
        """The array tasks of ``jobs`` the scheduler lists (on ``node``, or anywhere)."""
        raise NotImplementedError

    def queued(self, entry: Listed) -> bool:
        raise NotImplementedError

    def removed(self, entry: Listed) -> bool:
        """Whether the entry is one whose removal was asked for (and the scheduler has not finished)."""
        raise NotImplementedError

    def controller_pid(self) -> int:
        raise NotImplementedError

    def controller_answers(self) -> bool:
        raise NotImplementedError

    def nodes_known(self) -> bool:
        """Whether every node has reported to the controller (after a restart, before the next test)."""
        raise NotImplementedError

    def jobs_on_nodes(self) -> list[str]:
        """Every job the scheduler lists in the nodes' queue or partition, of any sweep."""
        raise NotImplementedError

    def clear_jobs(self, jobs: Collection[str]) -> None:
        """Removed as an administrator would, whatever the scheduler believes of them."""
        raise NotImplementedError

    def start_controller_command(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ the controller

    def save_state(self, jobs: Collection[str]) -> None:
        """Have the controller write its state of ``jobs`` to disk now (it keeps it there)."""

    def kill_controller(self, jobs: Collection[str] = ()) -> None:
        """SIGKILL to the controller (qmaster, slurmctld), as a crash would; once it has written its state
        of ``jobs`` to disk, so that the test is about the sweep, not about what a crash of the controller
        forgets."""
        began = time.time()
        self.save_state(jobs)
        self.save_waited = time.time() - began
        pid = self.controller_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, f"the {self.controller_name} to die")
        self.controller_killed = time.time()

    def start_controller(self) -> None:
        """The controller started again, the way ci/ starts it; when it was asked to start, and when it answered."""
        self.controller_start_asked = time.time()
        self.start_controller_command()
        wait_until(self.controller_answers, 60, f"the {self.controller_name} to answer after its start")
        self.controller_started = time.time()


def comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class GridEngineNodes(NodeCluster):
    name, script, daemon, remove_command = "gridengine", "multihost.sh", "sge_execd", "qdel"
    controller_name = "qmaster"
    variables = {"nodes": "SHEEPDOG_TEST_NODES", "submit_address": "SHEEPDOG_TEST_SUBMIT_ADDRESS",
                 "freezer": "SHEEPDOG_TEST_NODE_FREEZER", "queue": "SHEEPDOG_TEST_NODE_QUEUE"}

    def daemon_answers(self, node: str) -> bool:
        return answers(["qping", "-info", node, "6445", "execd", "1"])

    def options(self) -> dict[str, Any]:
        return {"queue": self.queue, "native_spec": os.environ.get("SHEEPDOG_TEST_NODE_RESOURCE", "")}

    def listed(self, jobs: Collection[str], node: str | None = None) -> list[Listed]:
        out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout
        found = []
        for fields in (line.split() for line in out.splitlines()[2:]):
            if fields and fields[0] in jobs:
                queue = fields[7] if len(fields) >= 10 else ""
                found.append(Listed(fields[0], fields[-1], fields[4], queue.partition("@")[2] or None))
        return [entry for entry in found if node is None or entry.node == node]

    def queued(self, entry: Listed) -> bool:
        return "q" in entry.state

    def removed(self, entry: Listed) -> bool:
        return "d" in entry.state

    def controller_pid(self) -> int:
        """sge_qmaster's pid, from the pid file in its spool directory (named in the cell's bootstrap file)."""
        bootstrap = pathlib.Path(os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
                                 os.environ.get("SGE_CELL", "default"), "common", "bootstrap").read_text()
        spool = next(line.split()[1] for line in bootstrap.splitlines() if line.startswith("qmaster_spool_dir"))
        pid = int(pathlib.Path(spool, "qmaster.pid").read_text())
        assert comm(pid) == "sge_qmaster", pid
        return pid

    def controller_answers(self) -> bool:
        return answers(["qstat"])

    def nodes_known(self) -> bool:
        return grid_engine_queues_known()

    def jobs_on_nodes(self) -> list[str]:
        out = subprocess.run(["qstat", "-u", "*", "-q", self.queue], capture_output=True, text=True, check=True).stdout
        return sorted({line.split()[0] for line in out.splitlines()[2:] if line.strip()})

    def clear_jobs(self, jobs: Collection[str]) -> None:
        subprocess.run(["qdel", "-f", *jobs], capture_output=True, timeout=60)

    def start_controller_command(self) -> None:
        subprocess.run(["/etc/init.d/gridengine-master", "start"], check=True, capture_output=True, timeout=60)


class SlurmNodes(NodeCluster):
    name, script, daemon, remove_command = "slurm", "slurm-multihost.sh", "slurmd", "scancel"
    controller_name = "slurmctld"
    variables = {"nodes": "SHEEPDOG_TEST_SLURM_NODES", "submit_address": "SHEEPDOG_TEST_SLURM_SUBMIT_ADDRESS",
                 "freezer": "SHEEPDOG_TEST_SLURM_FREEZER", "queue": "SHEEPDOG_TEST_SLURM_PARTITION"}

    def daemon_answers(self, node: str) -> bool:
        """slurmd runs in the node's freezer group, not frozen, and slurmctld hears it (no *: it answers pings)."""
        try:
            alive = any(comm(pid) == "slurmd" for pid in self.node_pids(node))
            thawed = self.freezer(node, "freezer.state").read_text().strip() == "THAWED"
        except OSError:
            return False
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--nodes", node, "--format=%T"], capture_output=True,
                             text=True).stdout.split()
        return alive and thawed and bool(out) and out[0] in ("idle", "mixed", "allocated", "completing")

    def options(self) -> dict[str, Any]:
        return {"queue": self.queue}

    def listed(self, jobs: Collection[str], node: str | None = None) -> list[Listed]:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %t %N"], capture_output=True,
                             text=True, check=True).stdout
        found = []
        for fields in (line.split() for line in out.splitlines()):
            job, _, task = fields[0].partition("_") if fields else ("", "", "")
            if job in jobs:
                found.append(Listed(job, task, fields[1], fields[2] if len(fields) > 2 else None))
        return [entry for entry in found if node is None or entry.node == node]

    def queued(self, entry: Listed) -> bool:
        return entry.state == "PD"

    def removed(self, entry: Listed) -> bool:
        return entry.state == "CG"

    def controller_pid(self) -> int:
        found = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True, check=True)
        return int(found.stdout.split()[0])

    def controller_answers(self) -> bool:
        return answers(["scontrol", "ping"], "is UP")

    def save_state(self, jobs: Collection[str]) -> None:
        """slurmctld writes its jobs to StateSaveLocation/job_state a few seconds after a change (measured:
        saves 5 s apart), and only after a change. A SIGKILL loses what it has not written: measured here,
        the restarted slurmctld forgot a sweep submitted 1 s before the kill, handed its job id out again
        (the nodes, which remembered the old job, were then DRAINED: "Duplicate jobid"), and ran again array
        tasks that had ended and been removed just before the kill. So: a change (a comment on the sweep's
        jobs), and the save that follows it (about 2 s)."""
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^StateSaveLocation\s*=\s*(\S+)", config, re.MULTILINE)
        assert found is not None, "no StateSaveLocation in `scontrol show config`"
        state = pathlib.Path(found.group(1), "job_state")
        asked = time.time()
        for job in sorted(jobs):
            subprocess.run(["scontrol", "update", f"jobid={job}", "comment=sheepdog-test: state saved before the kill"],
                           check=True, capture_output=True)
        wait_until(lambda: state.stat().st_mtime >= asked, 15, "slurmctld to write its state of the sweep's jobs")

    def nodes_known(self) -> bool:
        states = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True,
                                text=True).stdout.split()
        return bool(states) and not any(word in state for state in states
                                        for word in ("down", "unk", "not_responding", "*", "drain", "fail"))

    def jobs_on_nodes(self) -> list[str]:
        out = subprocess.run(["squeue", "--noheader", f"--partition={self.queue}", "--format=%i"], capture_output=True,
                             text=True, check=True).stdout
        return sorted(set(out.split()))

    def clear_jobs(self, jobs: Collection[str]) -> None:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)

    def start_controller_command(self) -> None:
        pathlib.Path("/run/slurm/slurmctld.pid").unlink(missing_ok=True)  # as ci/slurm.sh starts it
        subprocess.run(["slurmctld"], check=True, capture_output=True, timeout=60)


CLUSTER_CLASSES: dict[str, type[NodeCluster]] = {"gridengine": GridEngineNodes, "slurm": SlurmNodes}


def usable_multihost(request: pytest.FixtureRequest) -> NodeCluster:
    """The multi-host cluster of ``request.param``: its scheduler usable through this process's libdrmaa
    (the session fixture of conftest.py), its nodes up; a failure in CI when missing, a skip otherwise."""
    request.getfixturevalue(request.param)
    cluster = CLUSTER_CLASSES[request.param]()
    cluster.usable()
    return cluster


class MultihostSweep:
    """One sweep on a multi-host cluster's nodes, its workers reaching the server only across the bridge."""

    def __init__(self, cluster: NodeCluster, directory: pathlib.Path, store: str, name: str) -> None:
        self.cluster, self.directory, self.store, self.name = cluster, directory, store, name
        self.handle: Sweep | None = None

    def start(self, n_tasks: int, **options: Any) -> Sweep:
        """Start the sweep (map_async); ``options`` add to or override the ones here."""
        address = self.cluster.submit_address
        options = {"backend": "drmaa", "store": self.store, "name": self.name, "host": address, "bind": address,
                   **self.cluster.options(), "env": {"MULTIHOST_SUBMIT_ADDRESS": address},
                   "job_name": f"mh-{self.name}", "heartbeat_interval": HEARTBEAT_INTERVAL,
                   "heartbeat_timeout": HEARTBEAT_TIMEOUT, "progress": False, **options}
        self.handle = sheepdog_drmaa.map_async(
            report_where_then_wait, [(str(self.directory), index) for index in range(n_tasks)],
            **{name: value for name, value in options.items() if value is not None})
        return self.handle

    def started(self, n_tasks: int) -> list[int]:
        return [index for index in range(n_tasks) if runs(self.directory, index)]

    def all_started(self, n_tasks: int) -> bool:
        return len(self.started(n_tasks)) == n_tasks

    def release(self) -> None:
        (self.directory / "release").touch()

    def jobs(self) -> set[str]:
        return sweep_jobs(self.store, self.handle.id) if self.handle is not None else set()

    def left(self, node: str | None = None) -> list[Listed]:
        """The sweep's array tasks the scheduler still lists (on ``node``, or anywhere)."""
        return self.cluster.listed(self.jobs(), node)

    def close(self) -> None:
        """Release the tasks; cancel a sweep that has not ended (only after a failed test)."""
        self.release()
        if self.handle is not None and not self.handle.wait(30):
            self.handle.cancel(60)


def check_results(results: list[tuple[int, str, str]], n_tasks: int, cluster: NodeCluster) -> None:
    """Every result in order, each from one of the nodes, which reached the server from its bridge address."""
    assert [result[0] for result in results] == list(range(n_tasks))
    for index, host, address in results:
        assert host in cluster.nodes, (index, host)
        assert address == cluster.address_of(host), (index, host, address)
