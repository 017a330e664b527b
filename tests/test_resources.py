"""Resources by name (memory=, cores=, gpus=, project=) on the real schedulers: the request reaches
the scheduler in its own terms, names it does not know and requests it could never run are refused
before anything is submitted, and cores= tells f how many threads to use.

The test clusters of ci/ offer what a site does: on Grid Engine a parallel environment smp,
h_vmem consumable (64G on the host, 4G for a job that asks for none), a consumable gpu (2) and a
project sheepdog; on Slurm a node of 8 CPUs, 8000 MB and gres gpu:2.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time
import uuid
from typing import Any

import pytest
from helpers import Cluster, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import ConfigurationError

THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def threads_once_released(directory: str) -> dict[str, str | None]:
    """Wait until the test has looked at the job, then say what thread counts the job was given."""
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.05)
    return {name: os.environ.get(name) for name in THREADS}


def job_record(cluster: Cluster, worker: str) -> str:
    """What the scheduler shows about the worker's job (qstat -j / scontrol show job)."""
    job = cluster.array_of(worker)
    command = ["qstat", "-j", job] if cluster.name == "gridengine" else ["scontrol", "show", "job", job]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_resources_by_name_reach_the_scheduler_and_cores_set_the_thread_counts(cluster: Cluster, store: str,
                                                                               tmp_path: pathlib.Path) -> None:
    sweep = sheepdog_drmaa.map_async(threads_once_released, [str(tmp_path)], backend="drmaa", store=store,
                                     progress=False, memory="1G", cores=2, gpus=1, project="sheepdog",
                                     env={"OMP_NUM_THREADS": "1"})
    try:
        attempt = wait_until(lambda: sweep.attempts(), 60, "the task to start")[0]
        shown = job_record(cluster, attempt.worker)
        if cluster.name == "gridengine":
            # memory= is per worker, h_vmem per slot: 1G over 2 slots.
            assert re.search(r"hard resource_list:.*h_vmem=512M", shown), shown
            assert re.search(r"hard resource_list:.*gpu=1", shown), shown
            assert re.search(r"parallel environment:\s+smp range:\s+2\b", shown), shown
            assert re.search(r"^project:\s+sheepdog$", shown, re.MULTILINE), shown
        else:
            for field in ("MinMemoryNode=1G", "NumCPUs=2", "TresPerNode=gres:gpu:1", "Account=sheepdog"):
                assert field in shown, shown
    finally:
        (tmp_path / "go").write_text("")
    # env= wins over cores= for the variable it sets.
    assert sweep.results() == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                                "NUMEXPR_NUM_THREADS": "2"}]


def refused(cluster: Cluster, store: str, **options: Any) -> str:
    """The ConfigurationError that map raises for these options, having stored and submitted nothing."""
    name = "rf" + uuid.uuid4().hex[:6]  # others run jobs on these clusters too: ours are found by name
    with pytest.raises(ConfigurationError) as caught:
        sheepdog_drmaa.map(abs, [1], backend="drmaa", store=store, progress=False, job_name=name, **options)
    assert not os.path.exists(store)
    command = ["qstat", "-u", "*"] if cluster.name == "gridengine" else ["squeue", "--noheader", "--format=%j"]
    assert name not in subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return str(caught.value)


def test_names_the_scheduler_does_not_know_are_refused_listing_the_valid_ones(cluster: Cluster, store: str) -> None:
    if cluster.name == "gridengine":
        assert "its queues are all.q" in refused(cluster, store, queue="nowhere.q")
        assert "its parallel environments are smp" in refused(cluster, store, cores=2, parallel_env="mpi")
        message = refused(cluster, store, memory="1G", memory_resource="h_memory")
        assert "no such complex" in message and "h_vmem" in message and "mem_free" in message
        assert "its projects are sheepdog" in refused(cluster, store, project="elsewhere")
    else:
        assert "its partitions are debug" in refused(cluster, store, queue="nowhere")


def test_requests_that_could_never_be_scheduled_are_refused(cluster: Cluster, store: str) -> None:
    host = "host" if cluster.name == "gridengine" else "node"
    assert re.search(rf"cores=9: no {host} of .* (slots|CPUs) \(the most is 8\)", refused(cluster, store, cores=9))
    assert re.search(r"memory=1000G: no .* \(the most is [0-9.]+G", refused(cluster, store, memory="1000G"))
    assert "gpus=3: no" in refused(cluster, store, gpus=3) and "the most is 2" in refused(cluster, store, gpus=3)


@pytest.mark.gridengine
def test_a_job_variable_that_grid_engine_would_cut_is_refused(gridengine: Cluster, store: str) -> None:
    message = refused(gridengine, store, env={"JAVA_OPTS": "-Dlevel=debug"})
    assert "JAVA_OPTS" in message and "setup=" in message


def children_over_memory(n_children: int, megabytes: int) -> str:
    """Start processes that together hold more memory than the worker asked for, and wait for them."""
    import subprocess
    import sys
    hold = f"import time; b = bytearray({megabytes} << 20); time.sleep(60)"
    children = [subprocess.Popen([sys.executable, "-c", hold]) for _ in range(n_children)]
    for child in children:
        child.wait()
    return "not killed"


def test_a_worker_killed_for_memory_says_so_with_the_limit_and_the_peak(cluster: Cluster, store: str) -> None:
    sweep = sheepdog_drmaa.map_async(children_over_memory, [(3, 150)], backend="drmaa", store=store,
                                     progress=False, memory="400M", retries=0, errors="return")
    [failure] = sweep.results()
    [attempt] = sweep.attempts(0)
    assert attempt.cause == "memory", attempt
    assert attempt.detail["summary"].startswith("killed for memory: asked 400M, peak "), attempt.detail
    assert "memory=" in attempt.detail["summary"]
    assert failure.cause == "memory"
