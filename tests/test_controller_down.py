"""A map called while the scheduler's controller is down (Grid Engine's qmaster, Slurm's slurmctld).

Opening the DRMAA session and submitting are tried again while the controller cannot be reached, for
``outage_wait`` seconds; a controller back within that bound gives every result, one down for longer
makes the map raise, and the next map of the same process works once it is back (a failed session
open must not leave libdrmaa refusing every later one).

These tests stop the controller for every user of the test cluster: it is started again in a
``finally``, whatever happens.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import (
    Cluster,
    alive,
    brief,
    clear_removed_jobs,
    drmaa_session_closed,
    grid_engine_queues_known,
    wait_until,
)

import sheepdog_drmaa
from sheepdog_drmaa.errors import SchedulerOutage

OUTAGE = 20  # seconds the controller stays down in the test that rides it out


def square(x: int) -> int:
    return x * x


def answers(cluster: Cluster) -> bool:
    command = ["qstat"] if cluster.name == "gridengine" else ["scontrol", "ping"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and (cluster.name == "gridengine" or "is UP" in result.stdout)


def controller_pid(cluster: Cluster) -> int:
    if cluster.name == "gridengine":
        bootstrap = pathlib.Path(os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
                                 os.environ.get("SGE_CELL", "default"), "common", "bootstrap").read_text()
        spool = next(line.split()[1] for line in bootstrap.splitlines() if line.startswith("qmaster_spool_dir"))
        return int(pathlib.Path(spool, "qmaster.pid").read_text())
    found = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True, check=True)
    return int(found.stdout.split()[0])


class Controller:
    """Stops the scheduler's controller, and starts it the way ci/ starts it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def stop(self) -> None:
        """Shut the controller down as an administrator does (qconf -km; SIGTERM to slurmctld), its state saved."""
        pid = controller_pid(self.cluster)
        if self.cluster.name == "gridengine":
            subprocess.run(["qconf", "-km"], check=True, capture_output=True, timeout=30)
        else:
            os.kill(pid, signal.SIGTERM)
        # An ended controller whose parent has not reaped it yet stays in /proc as a zombie: not alive.
        wait_until(lambda: not alive(pid), 60, "the controller to stop")
        assert not answers(self.cluster)
        self.stopped = time.monotonic()

    def start(self) -> None:
        if self.cluster.name == "gridengine":
            subprocess.run(["/etc/init.d/gridengine-master", "start"], check=True, capture_output=True, timeout=60)
        else:
            subprocess.run(["slurmctld"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: answers(self.cluster), 60, "the controller to answer after its start")
        self.started = time.monotonic()


def nodes_known(cluster: Cluster) -> bool:
    """Whether every execution host has reported to the restarted controller (before the next test)."""
    if cluster.name == "gridengine":
        return grid_engine_queues_known()
    # The one-node cluster's partition (the nodes of ci/slurm-multihost.sh may be absent: down*).
    states = subprocess.run(["sinfo", "--noheader", "--Node", "--partition=debug", "--format=%T"], capture_output=True,
                            text=True).stdout
    return bool(states.split()) and not any(word in states for word in ("down", "unk", "not_responding", "*"))


@pytest.fixture
def controller(cluster: Cluster) -> Iterator[Controller]:
    """Stops and starts the controller on request; up again when the test ends, whatever happens, with the
    jobs its sweeps asked to remove and Grid Engine goes on showing cleared as an administrator would."""
    assert answers(cluster), "the controller does not answer at the start of the test"
    control = Controller(cluster)
    try:
        yield control
    finally:
        if not answers(cluster):
            control.start()
        wait_until(lambda: nodes_known(cluster), 90, "every execution host to report to the controller again")
        wait_until(drmaa_session_closed, 120, "this process's DRMAA session to finish closing")
        if cluster.name == "gridengine":
            stale = clear_removed_jobs()
            if stale:
                print(f"\n[{cluster.name}] left in qstat after the restart, cleared with qdel -f: {brief(stale)}")


def test_a_map_called_while_the_controller_is_down_finishes_once_it_is_back(controller: Controller,
                                                                            store: str) -> None:
    controller.stop()
    starter = threading.Timer(OUTAGE, controller.start)
    starter.start()
    try:
        results = sheepdog_drmaa.map(square, range(4), backend="drmaa", store=store, progress=False,
                                     outage_wait=120)
    finally:
        starter.join()
    assert results == [0, 1, 4, 9]
    print(f"\n[{controller.cluster.name}] the map returned {time.monotonic() - controller.started:.1f} s after the "
          f"controller answered again ({OUTAGE} s outage)")


def test_a_controller_down_longer_than_the_bound_fails_the_map_and_the_next_one_works(controller: Controller,
                                                                                      store: str) -> None:
    controller.stop()
    began = time.monotonic()
    # backend="auto" too: a cluster whose scheduler is down is an error, never a reason to run here instead.
    with pytest.raises(SchedulerOutage) as raised:
        sheepdog_drmaa.map(square, range(2), backend="auto", store=store, progress=False, outage_wait=5)
    waited = time.monotonic() - began
    assert waited >= 5, f"gave up after {waited:.1f} s, before outage_wait"
    assert "outage_wait" in str(raised.value) or "tried for 5 s" in str(raised.value), str(raised.value)
    controller.start()
    wait_until(lambda: nodes_known(controller.cluster), 90, "every execution host to report to the controller again")
    assert sheepdog_drmaa.map(square, range(3), backend="drmaa", store=store, progress=False) == [0, 1, 4]


def test_a_session_still_closing_after_an_outage_is_an_outage_and_auto_does_not_run_here(cluster: Cluster,
                                                                                          store: str) -> None:
    """After an outage the last session closes in the background; while it cannot close, backend="auto"
    must fail as for the outage itself, not take DRMAA as missing and run the tasks on this host."""
    from sheepdog_drmaa.backends.drmaa import _shared
    unanswered = threading.Event()
    closing = threading.Thread(target=unanswered.wait, name="a session exit waiting for its scheduler")
    closing.start()
    _shared.exiting = closing
    try:
        with pytest.raises(SchedulerOutage, match="still closing"):
            sheepdog_drmaa.map(square, range(2), backend="auto", store=store, progress=False, outage_wait=0.5)
    finally:
        unanswered.set()
        closing.join()
    assert sheepdog_drmaa.map(square, range(2), backend="auto", store=store, progress=False) == [0, 1]
