"""Shared fixtures: a temporary store, the real Grid Engine (required in CI), waiting helpers."""
import os
import shutil
import subprocess
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    config.addinivalue_line("markers", "gridengine: runs on the real one-node Grid Engine (required in CI)")


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


@pytest.fixture(scope="session")
def gridengine():
    """The real Grid Engine through libdrmaa; a failure (not a skip) in CI when it is missing."""
    problem = None
    if shutil.which("qstat") is None:
        problem = "qstat is not on PATH (run `bash ci/gridengine.sh` and eval its output)"
    else:
        result = subprocess.run(["qstat"], capture_output=True, text=True)
        if result.returncode != 0:
            problem = f"qstat failed: {result.stderr.strip()}"
    if problem is None:
        try:
            from sheepdog_drmaa.backends.drmaa import DrmaaBackend
            DrmaaBackend().close()
        except Exception as error:
            problem = str(error)
    if problem is not None:
        if IN_CI:
            pytest.fail(f"Grid Engine is required in CI but is not usable: {problem}")
        pytest.skip(f"Grid Engine is not usable here: {problem}")


@pytest.fixture
def clean_cluster(gridengine):
    """Assert the test leaves no job behind in qstat (waiting, with a deadline, for deletions to finish)."""
    yield
    wait_until(lambda: not qstat_jobs(), 30, "qstat to be empty after the test")


@pytest.fixture(params=["local", pytest.param("drmaa", marks=pytest.mark.gridengine)])
def backend(request):
    """Each backend in turn; the DRMAA one on the real Grid Engine, checked to leave no job behind."""
    if request.param == "drmaa":
        request.getfixturevalue("clean_cluster")
    return request.param


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store" / "sweeps.sqlite")
