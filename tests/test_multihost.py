"""Sweeps on the multi-host Grid Engine of ci/multihost.sh: three execution hosts (node1..node3), each a
network namespace on a bridge with the submit host at SHEEPDOG_TEST_SUBMIT_ADDRESS, and a queue of
their own that takes only jobs asking for the forced resource.

Bring-up: ``eval "$(bash ci/gridengine.sh)"`` then ``eval "$(bash ci/multihost.sh)"``. Every test
restores its node (``bash ci/multihost.sh restore NODE``, as an admin would) in a ``finally`` and
then checks that the test's jobs leave ``qstat``, so the next test starts on three healthy nodes.

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
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from helpers import (
    FREEZER,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    QUEUE,
    SUBMIT_ADDRESS,
    Cluster,
    MultihostSweep,
    brief,
    check_results,
    execd_answers,
    left_in_qstat,
    multihost_nodes,
    poll,
    restore,
    runs,
    wait_until,
)

import sheepdog_drmaa
from sheepdog_drmaa import address

if TYPE_CHECKING:
    from sheepdog_drmaa.model import AttemptRecord

pytestmark = pytest.mark.multihost
ON_THEIR_OWN = 20  # seconds the dead node's jobs get to leave qstat by themselves once it is back


@pytest.fixture(scope="module")
def nodes(gridengine: Cluster) -> list[str]:
    """The multi-host cluster; a failure in CI (CI=true) when it is missing, a skip otherwise."""
    return multihost_nodes()


def freezer(node: str, name: str) -> pathlib.Path:
    return pathlib.Path(FREEZER + node) / name


def node_pids(node: str) -> list[int]:
    return [int(pid) for pid in freezer(node, "cgroup.procs").read_text().split()]


def cut_link(node: str) -> None:
    subprocess.run(["ip", "link", "set", f"veth-{node}", "down"], check=True)


def freeze(node: str) -> None:
    freezer(node, "freezer.state").write_text("FROZEN")
    wait_until(lambda: freezer(node, "freezer.state").read_text().strip() == "FROZEN", 10, f"{node} to freeze")


def kill_all(node: str) -> None:
    # Frozen first, so that no process forks past the kill; SIGKILL is delivered on thawing.
    freeze(node)
    for pid in node_pids(node):
        os.kill(pid, signal.SIGKILL)
    freezer(node, "freezer.state").write_text("THAWED")
    wait_until(lambda: not node_pids(node), 10, f"every process of {node} to die")


def kill_execd(node: str) -> None:
    [execd] = [pid for pid in node_pids(node) if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() == "sge_execd"]
    os.kill(execd, signal.SIGKILL)
    wait_until(lambda: execd not in node_pids(node), 10, f"the execd of {node} to die")


def ended(attempt: AttemptRecord) -> float:
    """When an attempt the test knows to have ended did."""
    assert attempt.ended is not None, attempt
    return attempt.ended


FAULTS = {"link_down": cut_link, "frozen": freeze, "all_killed": kill_all, "execd_killed": kill_execd}


@pytest.fixture
def multihost_sweep(nodes: list[str], store: str, tmp_path: pathlib.Path,
                    request: pytest.FixtureRequest) -> Iterator[MultihostSweep]:
    for node in nodes:  # the previous test restored its node
        assert execd_answers(node), f"{node} is not healthy at the start of the test"
    directory = tmp_path / "runs"
    directory.mkdir()
    sweep = MultihostSweep(directory, store, request.node.name.replace("[", "-").rstrip("]"))
    yield sweep
    sweep.close()


# ---------------------------------------------------------------------------------------- tests


def test_a_sweep_spreads_over_the_hosts_and_records_each_attempts_host(nodes: list[str],
                                                                       multihost_sweep: MultihostSweep) -> None:
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
def test_a_node_cut_off_mid_task_loses_its_tasks_and_they_are_retried_elsewhere(
        nodes: list[str], multihost_sweep: MultihostSweep, fault: str) -> None:
    n_tasks = 6
    directory = multihost_sweep.directory
    handle = multihost_sweep.start(n_tasks)
    dead: str | None = None
    timings: dict[str, float] = {}
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
            def lost() -> list[AttemptRecord]:
                return [a for a in handle.attempts() if a.cause == "lost"]
            wait_until(lambda: len(lost()) >= len(on_dead), 4 * HEARTBEAT_TIMEOUT + 10,
                       f"the tasks {on_dead} of {dead} to be declared lost")
            timings["detection"] = max(ended(a) for a in lost()) - killed
            assert timings["detection"] >= HEARTBEAT_TIMEOUT - 2 * HEARTBEAT_INTERVAL, timings
        multihost_sweep.release()
        assert handle.wait(90), "the sweep did not end within 90 s of its release"
        timings["sweep ended"] = time.time() - killed
        if fault != "execd_killed":
            # The sweep did not wait for Grid Engine, which still shows the dead node's jobs.
            assert timings["sweep ended"] < 4 * HEARTBEAT_TIMEOUT, timings
            assert left_in_qstat(multihost_sweep.jobs(), queue=f"{QUEUE}@{dead}"), f"no job left on {dead}"
        results = handle.results()
        timings["recovery"] = max(ended(a) for a in handle.attempts()) - killed

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


def test_without_host_a_loopback_machine_name_gives_way_to_the_address_the_nodes_reach(
        nodes: list[str], multihost_sweep: MultihostSweep, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    own = address.addresses_of(socket.getfqdn())
    if not own or not all(address.is_loopback(a) for a in own):
        # This machine's name is routable: give it the name that resolves to loopback alone instead.
        assert address.addresses_of("localhost") and all(address.is_loopback(a) for a in
                                                          address.addresses_of("localhost"))
        monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    n_tasks = 6
    with caplog.at_level(logging.INFO, logger="sheepdog_drmaa.address"):
        handle = multihost_sweep.start(n_tasks, host=None, bind=None)
    multihost_sweep.release()
    assert handle.wait(60), "the sweep did not end within 60 s"
    check_results(handle.results(), n_tasks, nodes)  # the nodes reached it: only the bridge leads here
    assert f"workers will reach the server at {SUBMIT_ADDRESS}" in caplog.text, caplog.text


def test_workers_sent_to_a_dead_node_are_written_off_and_replaced_elsewhere(
        nodes: list[str], multihost_sweep: MultihostSweep, caplog: pytest.LogCaptureFixture) -> None:
    """A node whose link is down before the sweep starts: Grid Engine still sees its free slots and
    sends workers there, which never reach the server. After the hello timeout they are removed,
    the node is named, and no more workers go there; the sweep finishes on the others."""
    dead = nodes[-1]
    n_tasks = 12  # one worker each, as many as the nodes have slots: some are sent to the dead node
    cut_link(dead)
    jobs: set[str] = set()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="sheepdog_drmaa.runner"):
            handle = multihost_sweep.start(n_tasks, tasks_per_worker=1, workers=n_tasks)
            multihost_sweep.release()
            assert handle.wait(120), "the sweep did not end within 120 s"
        elapsed = time.monotonic() - started
        results = handle.results()
        jobs = multihost_sweep.jobs()
        check_results(results, n_tasks, nodes)
        assert dead not in {host for _, host, _ in results}
        written_off = [r.getMessage() for r in caplog.records if "has not reached the server" in r.getMessage()]
        assert written_off and all(f"started on {dead}" in message for message in written_off), caplog.text
        assert "no more workers of this sweep are sent there" in written_off[0]
        print(f"\n[dead node at start] {len(written_off)} workers written off on {dead}; sweep took {elapsed:.1f} s")
    finally:
        multihost_sweep.close()
        restore(dead)
        if jobs and not poll(lambda: not left_in_qstat(jobs), ON_THEIR_OWN):
            stuck = left_in_qstat(jobs)  # deleted by the sweep while the node was away (dt, dr)
            subprocess.run(["qdel", "-f", *sorted({line.split()[0] for line in stuck})], capture_output=True)
        wait_until(lambda: not left_in_qstat(jobs), 30, f"the sweep's jobs {sorted(jobs)} to leave qstat")
