"""Runtime limits: workers start no task they cannot finish, and a task longer than the limit says so.

On the real Grid Engine, with the limit given as ``-l h_rt`` in native_spec or as walltime= (Grid
Engine ends the job at it); the pure rules themselves are tested in test_sweep.py.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time

import pytest
from helpers import Cluster, wait_until

import sheepdog_drmaa


def sleep_then(seconds: float, x: int) -> int:
    time.sleep(seconds)
    return x


@pytest.mark.gridengine
def test_a_long_sweep_under_a_runtime_limit_loses_no_attempt_to_it(gridengine: Cluster, store: str) -> None:
    started = time.monotonic()
    results = sheepdog_drmaa.map(sleep_then, [(6, x) for x in range(40)], backend="drmaa", store=store, progress=False,
                                 workers=4, native_spec="-l h_rt=0:0:20", name="walltime")
    elapsed = time.monotonic() - started
    assert results == list(range(40))
    attempts = sheepdog_drmaa.Sweep.open("walltime", store=store).attempts()
    assert [a.cause for a in attempts] == ["result"] * 40  # none ended by the limit, none retried
    workers = {a.worker for a in attempts}
    assert len(workers) > 4  # workers that ran out of time were replaced
    per_worker = max(sum(1 for a in attempts if a.worker == w) for w in workers)
    assert per_worker <= 3  # 3 x 6 s is all that fits in 20 s
    print(f"40 tasks of 6 s, 4 workers of 20 s: {elapsed:.1f} s, {len(workers)} workers")
    wait_until(lambda: not gridengine.jobs(), 30, "qstat to be empty")


@pytest.mark.gridengine
def test_a_runtime_limit_given_by_name_replaces_workers_losing_no_attempt(gridengine: Cluster, store: str) -> None:
    # The same as above with walltime= instead of native_spec, on fewer tasks (12, not 40): with two
    # 6 s tasks fitting in a worker of 20 s, 4 workers cannot run them all; fresh ones take over.
    results = sheepdog_drmaa.map(sleep_then, [(6, x) for x in range(12)], backend="drmaa", store=store,
                                 progress=False, workers=4, walltime=20, name="walltime-by-name")
    assert results == list(range(12))
    attempts = sheepdog_drmaa.Sweep.open("walltime-by-name", store=store).attempts()
    assert [a.cause for a in attempts] == ["result"] * 12
    workers = {a.worker for a in attempts}
    assert len(workers) > 4
    assert max(sum(1 for a in attempts if a.worker == w) for w in workers) <= 3
    arrays = {gridengine.array_of(w) for w in workers}
    wait_until(lambda: not [j for j in gridengine.jobs() if j.split()[0] in arrays], 30, "the workers to leave qstat")


@pytest.mark.gridengine
def test_a_task_longer_than_the_runtime_limit_fails_at_once_naming_the_option(gridengine: Cluster, store: str) -> None:
    started = time.monotonic()
    with pytest.raises(sheepdog_drmaa.SweepFailed) as caught:
        sheepdog_drmaa.map(sleep_then, [(60, 1)], backend="drmaa", store=store, progress=False, retries=3,
                           native_spec="-l h_rt=0:0:6")
    failure = caught.value.failures[0]
    assert failure.cause == "walltime" and failure.attempts == 1
    assert "whole runtime limit of 6 s" in failure.summary and "walltime=" in failure.summary
    assert time.monotonic() - started < 45
    wait_until(lambda: not gridengine.jobs(), 30, "qstat to be empty")


def wait_for_go(directory: str) -> str:
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.05)
    return "went"


def test_walltime_is_asked_of_the_scheduler(cluster: Cluster, store: str, tmp_path: pathlib.Path) -> None:
    sweep = sheepdog_drmaa.map_async(wait_for_go, [str(tmp_path)], backend="drmaa", store=store, progress=False,
                                     walltime="0:02:00")
    try:
        attempt = wait_until(lambda: sweep.attempts(), 60, "the task to start")[0]
        job = cluster.array_of(attempt.worker)
        if cluster.name == "gridengine":
            shown = subprocess.run(["qstat", "-j", job], capture_output=True, text=True).stdout
            assert re.search(r"h_rt=(120|0:2:0|00:02:00)\b", shown), shown
        else:
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            assert "TimeLimit=00:02:00" in shown, shown
    finally:
        (tmp_path / "go").write_text("")
    assert sweep.results() == ["went"]


@pytest.mark.slurm
def test_a_grid_engine_runtime_spelling_is_refused_on_slurm_before_anything_is_stored(slurm: Cluster,
                                                                                      store: str) -> None:
    with pytest.raises(sheepdog_drmaa.ConfigurationError, match=r"-l h_rt=0:0:20 is Grid Engine's spelling.*--time"):
        sheepdog_drmaa.map(sleep_then, [(6, 1)], backend="drmaa", store=store, progress=False,
                           native_spec="-l h_rt=0:0:20")
    assert not os.path.exists(store)
