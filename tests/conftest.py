"""Shared fixtures: a temporary store, and the real schedulers (required in CI) each test runs on.

drmaa-python loads one libdrmaa per process, chosen by DRMAA_LIBRARY_PATH, so one pytest process
tests local and one scheduler: ci/test.sh runs Grid Engine's (``-m "not slurm"``) and then Slurm's
(``-m slurm``) in a process of its own.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
from helpers import BackendName, Cluster, poll, wait_until

IN_CI = os.environ.get("CI", "").lower() == "true"
CLUSTERS = [pytest.param("gridengine", marks=pytest.mark.gridengine),
            pytest.param("slurm", marks=pytest.mark.slurm)]


def usable_cluster(name: str) -> Cluster:
    """The real scheduler ``name`` through libdrmaa; a failure (not a skip) in CI when it is missing."""
    cluster = Cluster(name)
    setup = {"gridengine": "ci/gridengine.sh", "slurm": "ci/slurm.sh"}[name]
    problem: str | None = None
    if shutil.which(cluster.command) is None:
        problem = f"{cluster.command} is not on PATH (run `bash {setup}` and eval its output)"
    else:
        result = subprocess.run([cluster.command], capture_output=True, text=True)
        if result.returncode != 0:
            problem = f"{cluster.command} failed: {result.stderr.strip()}"
    if problem is None:
        try:
            from sheepdog_drmaa.backends.drmaa import DrmaaBackend
            backend = DrmaaBackend()
            answered = backend.scheduler.name
            backend.close()
            if answered != name:
                problem = (f"this process loaded the DRMAA library of {answered} "
                           f"(DRMAA_LIBRARY_PATH={os.environ.get('DRMAA_LIBRARY_PATH')!r}); run the {name} tests "
                           f"in a pytest process of their own with {name}'s libdrmaa, as ci/test.sh does")
        except Exception as error:
            problem = str(error)
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not usable: {problem}")
        pytest.skip(f"{name} is not usable here: {problem}")
    return cluster


@pytest.fixture(scope="session")
def gridengine() -> Cluster:
    return usable_cluster("gridengine")


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    return usable_cluster("slurm")


def checked_clean(request: pytest.FixtureRequest, name: str) -> Cluster:
    """The session's cluster ``name``, with a check after the test that it left no job behind."""
    cluster: Cluster = request.getfixturevalue(name)
    request.addfinalizer(lambda: left_clean(cluster))
    return cluster


def left_clean(cluster: Cluster) -> None:
    """No job is left in the scheduler within 30 s of the test's end.

    On Grid Engine a job whose deletion was asked for (state ``dr``) may stay listed for good: seen
    under load, with its shepherd done and the job killed, an execd that never reported it ended.
    Deleting it was asked for, so it does not fail the test; it is forced out (``qdel -f``, as an
    administrator would) so that it does not fail the tests after this one either.
    """
    if poll(lambda: not cluster.jobs(), 30):
        return
    left = cluster.jobs()
    stuck = {line.split()[0] for line in left if cluster.name == "gridengine" and line.split()[4] == "dr"}
    if not stuck or len(stuck) < len({line.split()[0] for line in left}):
        pytest.fail(f"{cluster.command} is not empty 30 s after the test:\n" + "\n".join(left))
    subprocess.run(["qdel", "-f", *sorted(stuck)], capture_output=True, text=True, timeout=60)
    wait_until(lambda: not cluster.jobs(), 30, f"{cluster.command} to be empty once its jobs stuck in dr went")


@pytest.fixture(params=CLUSTERS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Each real scheduler in turn, checked to leave no job behind."""
    return checked_clean(request, request.param)


@pytest.fixture(params=["local", *CLUSTERS])
def backend(request: pytest.FixtureRequest) -> BackendName:
    """Each backend in turn: local processes, then DRMAA on each real scheduler, checked to leave no job."""
    if request.param == "local":
        return BackendName("local", "local")
    checked_clean(request, request.param)
    return BackendName("drmaa", request.param)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "store" / "sweeps.sqlite")
