"""What every backend promises the runner (backends/__init__.py, Backend), checked on each one.

The workers here are not sheepdog workers but a stand-in interpreter that exits with the status
it is told, or sleeps: submission, exit information, termination and leftovers are the backend's
alone, whatever the workers do.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import stat
import time
from collections.abc import Collection, Iterator
from typing import Optional

import pytest
from helpers import Cluster, wait_until

from sheepdog_drmaa.backends import Backend, WorkerSpec, open_backend
from sheepdog_drmaa.failures import classify
from sheepdog_drmaa.model import ExitInfo

# The contract_backend fixture: the backend, and the real scheduler behind it (None for local processes).
Contract = tuple[Backend, Optional[Cluster]]

STAND_IN = """#!/bin/sh
# Called as: stand-in -m sheepdog_drmaa.worker. Behaves as $CONTRACT_BEHAVIOUR says.
case "$CONTRACT_BEHAVIOUR" in
  sleep) exec sleep 300 ;;
  *) exit "$CONTRACT_BEHAVIOUR" ;;
esac
"""


@pytest.fixture(params=["local", pytest.param("gridengine", marks=pytest.mark.gridengine),
                        pytest.param("slurm", marks=pytest.mark.slurm)])
def contract_backend(request: pytest.FixtureRequest) -> Iterator[Contract]:
    """A backend opened as the runner opens it: local, or DRMAA on each real scheduler."""
    if request.param == "local":
        backend = open_backend("local")
        yield backend, None
    else:
        cluster: Cluster = request.getfixturevalue(request.param)  # fails in CI if the scheduler is not usable
        backend = open_backend("drmaa")
        yield backend, cluster
    backend.close()


def spec_for(tmp_path: pathlib.Path, behaviour: str) -> WorkerSpec:
    interpreter = tmp_path / "stand-in"
    interpreter.write_text(STAND_IN)
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IXUSR)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    environment = {"CONTRACT_BEHAVIOUR": behaviour, "CONTRACT_RUN": str(tmp_path)}
    return WorkerSpec(python=str(interpreter), environment=environment,
                      working_directory=str(tmp_path), log_dir=str(logs), job_name="contract")


def collect(backend: Backend, ids: Collection[str], timeout: float = 120) -> dict[str, ExitInfo]:
    """The exit information of every worker in ``ids``, waiting for each with a deadline."""
    endings: dict[str, ExitInfo] = {}
    deadline = time.monotonic() + timeout
    while set(endings) != set(ids):
        assert time.monotonic() < deadline, f"no exit information for {sorted(set(ids) - set(endings))}"
        info = backend.wait_any(0.5)
        if info is not None:
            assert info.worker in ids and info.worker not in endings, info
            endings[info.worker] = info
    return endings


def test_a_bulk_submission_gives_distinct_ids_and_each_workers_exit_status(contract_backend: Contract,
                                                                           tmp_path: pathlib.Path) -> None:
    backend, _ = contract_backend
    ids = backend.submit(3, spec_for(tmp_path, "3"))
    assert len(ids) == len(set(ids)) == 3
    for info in collect(backend, ids).values():
        assert info.exited and info.exit_status == 3 and not info.aborted
    assert backend.wait_any(0) is None  # every ending is given once


def test_a_clean_exit_is_reported_clean(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, _ = contract_backend
    ids = backend.submit(2, spec_for(tmp_path, "0"))
    assert all(classify(info).clean for info in collect(backend, ids).values())


def test_terminated_workers_end_and_are_reported_not_clean(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    ids = backend.submit(2, spec_for(tmp_path, "sleep"))
    if cluster is not None:
        wait_until(lambda: not set(cluster.queued_workers()) & set(ids), 60, "the workers to start")
    else:
        time.sleep(0.2)  # local workers start at once; give sleep a moment to be exec'd
    backend.terminate(ids)
    for info in collect(backend, ids).values():
        assert not classify(info).clean, info


def test_started_workers_are_shown_with_their_host_until_they_end(contract_backend: Contract,
                                                                  tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    ids = backend.submit(2, spec_for(tmp_path, "sleep"))
    shown = wait_until(lambda: (lambda hosts: hosts if set(hosts) == set(ids) else None)(backend.running_hosts()),
                       60, "both workers to be shown started")
    here = os.uname().nodename
    # The one-node Grid Engine's execution host is this machine under the name its execd goes by.
    assert all(host and (cluster is not None or host == here) for host in shown.values()), shown
    assert backend.running_hosts() == shown  # asked again at once: the same answer, no new listing
    backend.terminate(ids)
    collect(backend, ids)
    assert backend.running_hosts() == {}  # an ended worker is never shown started


def test_execution_hosts_are_listed(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    hosts = backend.execution_hosts(spec_for(tmp_path, "sleep"))
    if cluster is None:
        assert hosts == []  # local workers run on this machine only
    else:
        assert hosts and all(isinstance(host, str) for host in hosts), hosts


def test_queued_workers_can_be_terminated_before_they_start(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    slots = 8 if cluster is not None else getattr(backend, "slots", 2)
    ids = backend.submit(slots + 3, spec_for(tmp_path, "sleep"))
    backend.terminate(ids)
    assert set(collect(backend, ids)) == set(ids)


def test_leftovers_of_an_earlier_client_are_removed(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    earlier = open_backend("local" if cluster is None else "drmaa")  # a client that died, say
    try:
        ids = earlier.submit(2, spec_for(tmp_path, "sleep"))
        if cluster is None:
            wait_until(lambda: len(stand_ins(tmp_path)) == 2, 10, "the earlier client's workers to run")
        backend.terminate_leftovers([(worker, None, None) for worker in ids])
        if cluster is None:
            wait_until(lambda: not stand_ins(tmp_path), 10, "the earlier client's workers to be gone")
        else:
            wait_until(lambda: not jobs_of(cluster, ids), 60, "the earlier client's workers to leave the scheduler")
    finally:
        earlier.close()


def test_close_leaves_no_worker_behind(contract_backend: Contract, tmp_path: pathlib.Path) -> None:
    backend, cluster = contract_backend
    ids = backend.submit(3, spec_for(tmp_path, "sleep"))
    backend.close()
    if cluster is not None:
        wait_until(lambda: not jobs_of(cluster, ids), 60, "the scheduler to have no job of this backend left")
    else:
        wait_until(lambda: not stand_ins(tmp_path), 10, "the local workers to be gone")


def jobs_of(cluster: Cluster, ids: Collection[str]) -> list[str]:
    """The scheduler's lines about the array jobs of ``ids`` (other tests' jobs are not ours to judge)."""
    arrays = {cluster.array_of(worker) for worker in ids}
    return [line for line in cluster.jobs() if cluster.array_of(line.split()[0]) in arrays]


def stand_ins(tmp_path: pathlib.Path) -> list[str]:
    """Live processes started as sleeping stand-in workers by the test of ``tmp_path`` (zombies are gone
    already; other tests' and other runs' stand-ins are not counted)."""
    tag = f"CONTRACT_RUN={tmp_path}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environment = handle.read()
                tagged = b"CONTRACT_BEHAVIOUR=sleep" in environment and tag in environment
            with open(f"/proc/{pid}/stat", "rb") as handle:
                alive = handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            continue
        if tagged and alive:
            found.append(pid)
    return found


def test_hosts_to_avoid_that_are_unknown_or_every_host_there_is_do_not_stop_the_workers(
        contract_backend: Contract, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """Excluding a host the scheduler does not know (Slurm refuses the job) or every host the request can
    run on (the job could never start) is left out of the submission, saying so; the workers run."""
    backend, cluster = contract_backend
    here = os.uname().nodename  # the one-node test cluster's host (ci/ names it after this machine)
    spec = dataclasses.replace(spec_for(tmp_path, "0"), avoid_hosts=("no-such-host", here))
    with caplog.at_level(logging.WARNING):
        ids = backend.submit(2, spec)
    assert all(classify(info).clean for info in collect(backend, ids).values())
    if cluster is not None:
        assert "not excluding no-such-host" in caplog.text, caplog.text
        assert f"every host this request can run on is to be avoided ({here})" in caplog.text, caplog.text

