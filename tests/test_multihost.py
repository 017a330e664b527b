"""Sweeps on the multi-host clusters of this machine: Grid Engine's (ci/multihost.sh: node1..node3, queue
nodes.q) and Slurm's (ci/slurm-multihost.sh: snode1..snode3, partition multi). Each node is a network
namespace on a bridge with the submit host at the cluster's submit address; every test runs on both
(see multihost_clusters.py).

Bring-up: ``eval "$(bash ci/gridengine.sh)"; eval "$(bash ci/multihost.sh)"`` for Grid Engine,
``eval "$(bash ci/slurm.sh)"; eval "$(bash ci/slurm-multihost.sh)"`` for Slurm. Every test restores its
node (``bash ci/...sh restore NODE``, as an admin would) in a ``finally`` and then checks that the test's
jobs leave the scheduler and no worker process is left on a node, so the next test starts on three
healthy nodes.

The tasks block until the test releases them (a file), so the test decides when they end instead
of guessing how long a task must last; executions are recorded in files, so a retry is seen.
"""
from __future__ import annotations

import logging
import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from helpers import poll, runs, wait_until
from multihost_clusters import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MULTIHOST,
    MultihostSweep,
    NodeCluster,
    brief,
    check_results,
    usable_multihost,
)

import sheepdog_drmaa
from sheepdog_drmaa import address

if TYPE_CHECKING:
    from sheepdog_drmaa.model import AttemptRecord

pytestmark = pytest.mark.multihost
ON_THEIR_OWN = 20  # seconds the dead node's jobs get to leave the scheduler by themselves once it is back
WORKERS_GONE = 30  # seconds every worker process gets to end once the sweep is over and its node back


@pytest.fixture(scope="module", params=MULTIHOST)
def multihost(request: pytest.FixtureRequest) -> NodeCluster:
    """Each multi-host cluster in turn; a failure in CI (CI=true) when it is missing, a skip otherwise."""
    return usable_multihost(request)


# ---------------------------------------------------------------------------------------- faults


def cut_link(cluster: NodeCluster, node: str) -> None:
    subprocess.run(["ip", "link", "set", f"veth-{node}", "down"], check=True)


def freeze(cluster: NodeCluster, node: str) -> None:
    cluster.freezer(node, "freezer.state").write_text("FROZEN")
    wait_until(lambda: cluster.freezer(node, "freezer.state").read_text().strip() == "FROZEN", 10,
               f"{node} to freeze")


def kill_all(cluster: NodeCluster, node: str) -> None:
    # Frozen first, so that no process forks past the kill; SIGKILL is delivered on thawing.
    freeze(cluster, node)
    for pid in cluster.node_pids(node):
        os.kill(pid, signal.SIGKILL)
    cluster.freezer(node, "freezer.state").write_text("THAWED")
    wait_until(lambda: not cluster.node_pids(node), 10, f"every process of {node} to die")


def kill_daemon(cluster: NodeCluster, node: str) -> None:
    """SIGKILL to the node's daemon alone (sge_execd, slurmd): its jobs go on running."""
    daemon = cluster.daemon_pid(node)
    os.kill(daemon, signal.SIGKILL)
    wait_until(lambda: daemon not in cluster.node_pids(node), 10, f"the {cluster.daemon} of {node} to die")


FAULTS: dict[str, Callable[[NodeCluster, str], None]] = {
    "link_down": cut_link, "frozen": freeze, "all_killed": kill_all, "daemon_killed": kill_daemon}


def ended(attempt: AttemptRecord) -> float:
    """When an attempt the test knows to have ended did."""
    assert attempt.ended is not None, attempt
    return attempt.ended


@pytest.fixture
def multihost_sweep(multihost: NodeCluster, store: str, tmp_path: pathlib.Path,
                    request: pytest.FixtureRequest) -> Iterator[MultihostSweep]:
    for node in multihost.nodes:  # the previous test restored its node
        assert multihost.daemon_answers(node), f"{node} is not healthy at the start of the test"
    directory = tmp_path / "runs"
    directory.mkdir()
    sweep = MultihostSweep(multihost, directory, store, request.node.name.replace("[", "-").rstrip("]"))
    yield sweep
    sweep.close()


def restore_and_check(sweep: MultihostSweep, dead: str | None, label: str) -> None:
    """After the sweep: its node restored, its jobs gone from the scheduler, no worker process left."""
    cluster = sweep.cluster
    sweep.close()
    jobs = sweep.jobs()
    if dead is not None:
        stale = sweep.left()
        restoring = time.time()
        cluster.restore(dead)
        restored = time.time()
        print(f"[{label}] the sweep's jobs listed when it ended: {brief(stale)}; {dead} restored in "
              f"{restored - restoring:.1f} s")
        if not poll(lambda: not cluster.listed(jobs), ON_THEIR_OWN):
            stuck = cluster.listed(jobs)
            # Seen on Grid Engine only, with a replacement worker that it dispatched onto the dead node (state
            # t, deleted by the sweep: dt): Grid Engine clears it only about 60 s after the node's execd is
            # back. The sweep already deleted it; an admin forces the deletion.
            assert cluster.name == "gridengine", f"still listed {ON_THEIR_OWN} s after {dead} came back: {brief(stuck)}"
            assert all(cluster.removed(entry) for entry in stuck), f"not deleted by the sweep: {brief(stuck)}"
            print(f"[{label}] still in qstat {ON_THEIR_OWN} s after {dead} came back, so qdel -f: {brief(stuck)}")
            subprocess.run(["qdel", "-f", *sorted({entry.job for entry in stuck})], capture_output=True)
        wait_until(lambda: not cluster.listed(jobs), 30,
                   f"the sweep's jobs {sorted(jobs)} to leave the scheduler after {dead} came back")
        print(f"[{label}] the sweep's jobs left the scheduler {time.time() - restored:.1f} s after {dead} came back")
    else:
        wait_until(lambda: not cluster.listed(jobs), 60, f"the sweep's jobs {sorted(jobs)} to leave the scheduler")
    wait_until(lambda: not cluster.worker_processes(), WORKERS_GONE, "every worker process on the nodes to end")


# ---------------------------------------------------------------------------------------- tests


def test_a_sweep_spreads_over_the_hosts_and_records_each_attempts_host(multihost: NodeCluster,
                                                                       multihost_sweep: MultihostSweep) -> None:
    n_tasks = 9  # more than two nodes' slots (4 each): every node gets some
    began = time.time()
    handle = multihost_sweep.start(n_tasks)
    try:
        wait_until(lambda: multihost_sweep.all_started(n_tasks), 60, "every task to start")
        multihost_sweep.release()
        assert handle.wait(60), "the sweep did not end within 60 s of its release"
        results = handle.results()
        check_results(results, n_tasks, multihost)
        assert {host for _, host, _ in results} == set(multihost.nodes), results

        attempts = sheepdog_drmaa.Sweep.open(multihost_sweep.name, store=multihost_sweep.store).attempts()
        assert [(a.task, a.cause) for a in attempts] == [(index, "result") for index in range(n_tasks)]
        for attempt, (index, host, _) in zip(attempts, results):
            assert attempt.host == host == runs(multihost_sweep.directory, index)[0], (attempt, host)
        print(f"\n[{multihost.name} spread] {n_tasks} tasks over {sorted({h for _, h, _ in results})} in "
              f"{time.time() - began:.1f} s")
    finally:
        restore_and_check(multihost_sweep, None, f"{multihost.name} spread")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_node_cut_off_mid_task_loses_its_tasks_and_they_are_retried_elsewhere(
        multihost: NodeCluster, multihost_sweep: MultihostSweep, fault: str) -> None:
    """link_down, frozen and all_killed: the node's tasks are written off within the heartbeat timeout and
    retried elsewhere, and the sweep ends without waiting for the scheduler, which still lists the node's
    jobs (Grid Engine: r/dr; Slurm: CG, cancelled on a node that cannot answer, until the node answers or
    Slurm sets it DOWN after SlurmdTimeout). daemon_killed: the workers talk to the server over HTTP, not
    through the node's daemon: nothing is written off, every task ends where it started."""
    n_tasks = 6
    label = f"{multihost.name} {fault}"
    directory = multihost_sweep.directory
    handle = multihost_sweep.start(n_tasks)
    dead: str | None = None
    timings: dict[str, float] = {}
    try:
        wait_until(lambda: multihost_sweep.all_started(n_tasks), 60, "every task to start")
        dead = runs(directory, 0)[0]
        on_dead = [index for index in range(n_tasks) if runs(directory, index)[0] == dead]
        hosts = [runs(directory, index)[0] for index in range(n_tasks)]
        print(f"\n[{label}] tasks on {dead}: {on_dead}; hosts: {hosts}")
        assert len(set(hosts)) > 1, f"every task runs on {dead}: no other host to retry on"
        killed = time.time()
        FAULTS[fault](multihost, dead)

        if fault == "daemon_killed":
            # Over twice the heartbeat timeout without the daemon, nothing is written off.
            window = time.monotonic() + 2 * HEARTBEAT_TIMEOUT
            while time.monotonic() < window:
                assert not [a for a in handle.attempts() if a.cause == "lost"], handle.attempts()
                time.sleep(0.2)
        else:
            def lost() -> list[AttemptRecord]:
                return [a for a in handle.attempts() if a.cause == "lost"]
            wait_until(lambda: len(lost()) >= len(on_dead), 4 * HEARTBEAT_TIMEOUT + 10,
                       f"the tasks {on_dead} of {dead} to be declared lost")
            timings["written off"] = max(ended(a) for a in lost()) - killed
            assert timings["written off"] >= HEARTBEAT_TIMEOUT - 2 * HEARTBEAT_INTERVAL, timings
        multihost_sweep.release()
        assert handle.wait(90), "the sweep did not end within 90 s of its release"
        timings["sweep ended"] = time.time() - killed
        on_node = multihost_sweep.left(dead)
        if fault != "daemon_killed":
            # The sweep did not wait for the scheduler, which still lists the dead node's jobs.
            assert timings["sweep ended"] < 4 * HEARTBEAT_TIMEOUT, timings
            assert on_node, f"no job of the sweep listed on {dead}"
            if multihost.name == "slurm":
                assert all(entry.state == "CG" for entry in on_node), brief(on_node)
        print(f"[{label}] listed on {dead} when the sweep ended: {brief(on_node)}")
        results = handle.results()
        last = "retried" if fault != "daemon_killed" else "last task done"
        timings[last] = max(ended(a) for a in handle.attempts()) - killed

        check_results(results, n_tasks, multihost)
        for index in range(n_tasks):
            attempts = handle.attempts(index)
            if fault != "daemon_killed" and index in on_dead:
                assert [a.cause for a in attempts] == ["lost", "result"], (index, attempts)
                assert attempts[0].host == dead and attempts[1].host != dead, (index, attempts)
                assert results[index][1] != dead
            else:
                assert [a.cause for a in attempts] == ["result"], (index, attempts)
                assert attempts[0].host == results[index][1] == runs(directory, index)[0], (index, attempts)
        print(f"[{label}] " + ", ".join(f"{what} {seconds:.1f} s after the fault" for what, seconds in timings.items()))
    finally:
        restore_and_check(multihost_sweep, dead, label)


def test_without_host_a_loopback_machine_name_gives_way_to_the_address_the_nodes_reach(
        multihost: NodeCluster, multihost_sweep: MultihostSweep, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    own = address.addresses_of(socket.getfqdn())
    if not own or not all(address.is_loopback(a) for a in own):
        # This machine's name is routable: give it the name that resolves to loopback alone instead.
        assert address.addresses_of("localhost") and all(address.is_loopback(a) for a in
                                                          address.addresses_of("localhost"))
        monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    n_tasks = 6
    try:
        with caplog.at_level(logging.INFO, logger="sheepdog_drmaa.address"):
            handle = multihost_sweep.start(n_tasks, host=None, bind=None)
        multihost_sweep.release()
        assert handle.wait(60), "the sweep did not end within 60 s"
        check_results(handle.results(), n_tasks, multihost)  # the nodes reached it: only the bridge leads here
        assert f"workers will reach the server at {multihost.submit_address}" in caplog.text, caplog.text
    finally:
        restore_and_check(multihost_sweep, None, f"{multihost.name} without host")


def test_workers_sent_to_a_dead_node_are_written_off_and_replaced_elsewhere(
        multihost: NodeCluster, multihost_sweep: MultihostSweep, caplog: pytest.LogCaptureFixture) -> None:
    """A node whose link is cut just before the sweep starts: the scheduler still takes it for up and sends
    workers there, which never reach the server (Grid Engine sees its free slots for minutes; Slurm shows
    them running until its launch request times out, then requeues them, and marks the node DOWN only
    after SlurmdTimeout). After the hello timeout they are removed, the node is named, and no more workers
    go there; the sweep finishes on the others."""
    dead = multihost.nodes[-1]
    n_tasks = 12  # one worker each, as many as the nodes have slots: some are sent to the dead node
    label = f"{multihost.name} dead node at start"
    cut_link(multihost, dead)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="sheepdog_drmaa"):
            handle = multihost_sweep.start(n_tasks, tasks_per_worker=1, workers=n_tasks)
            multihost_sweep.release()
            assert handle.wait(120), "the sweep did not end within 120 s"
        elapsed = time.monotonic() - started
        results = handle.results()
        check_results(results, n_tasks, multihost)
        assert dead not in {host for _, host, _ in results}
        written_off = [r.getMessage() for r in caplog.records if "has not reached the server" in r.getMessage()]
        assert written_off and all(f"started on {dead}" in message for message in written_off), caplog.text
        assert "no more workers of this sweep are sent there" in written_off[0]
        print(f"\n[{label}] {len(written_off)} workers written off on {dead}; sweep took {elapsed:.1f} s; "
              f"listed on {dead} when it ended: {brief(multihost_sweep.left(dead))}")
    finally:
        restore_and_check(multihost_sweep, dead, label)
