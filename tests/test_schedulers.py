"""The per-scheduler part of the DRMAA backend: which scheduler answered, ids, limits, option spellings."""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import pytest
from helpers import Cluster, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import ConfigurationError, WorkersCannotStart
from sheepdog_drmaa.backends import WorkerSpec, log_paths
from sheepdog_drmaa.backends.schedulers import GridEngine, Scheduler, Slurm, identify
from sheepdog_drmaa.worker_ids import worker_id_from_environment


@pytest.mark.parametrize("implementation, drms, name", [
    ("SGE 8.1.9", "SGE 8.1.9", "gridengine"),
    ("DRMAA for Slurm 1.1.6", "SLURM 22.05.8", "slurm"),
    ("UGE 8.6.4", "UGE 8.6.4", "gridengine"),
])
def test_the_scheduler_is_chosen_from_the_drmaa_implementation_string(implementation: str, drms: str,
                                                                      name: str) -> None:
    assert identify(implementation, drms).name == name


def test_an_unknown_scheduler_gets_plain_drmaa_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = identify("PBS DRMAA v. 1.0.19", "Torque 6.1")
    assert type(scheduler) is Scheduler and "not tested on" in caplog.text


def test_array_ids_and_the_largest_array() -> None:
    assert GridEngine().array_of("49.3") == "49" and Slurm().array_of("238_4") == "238"
    assert GridEngine().max_array_size("max_aj_instances 2000\nmax_aj_tasks 500\n") == 500
    assert GridEngine().max_array_size("") == 75_000
    assert Slurm().max_array_size("MaxArraySize            = 40001\nMaxJobCount = 10000\n") == 40_000
    assert Slurm().max_array_size("") == 1000  # Slurm's default MaxArraySize=1001 allows indices up to 1000


def spec_of(**fields: Any) -> WorkerSpec:
    return WorkerSpec(python="python3", environment={}, working_directory=".", log_dir=".", job_name="j", **fields)


def test_queue_is_the_partition_on_slurm() -> None:
    assert GridEngine().native_specification(spec_of(queue="long.q", native_spec="-l h_vmem=1G")) == \
        "-q long.q -l h_vmem=1G"
    assert Slurm().native_specification(spec_of(queue="long", native_spec="--mem=1G")) == \
        "-p long --mem=1G --no-requeue"
    assert Slurm().native_specification(spec_of()) == "--no-requeue"  # the sweep retries; Slurm must not
    assert Slurm().native_specification(spec_of(native_spec="--requeue")) == "--requeue"


def test_resources_by_name_in_grid_engine_terms_with_native_spec_last() -> None:
    spec = spec_of(memory=4 << 30, cores=4, gpus=1, project="lab", walltime=90, native_spec="-l h_vmem=2G")
    assert GridEngine().native_specification(spec) == \
        "-l h_rt=0:01:30 -pe smp 4 -l h_vmem=1024M -l gpu=1 -P lab -l h_vmem=2G"
    # memory= is per worker; Grid Engine counts it per slot, so it is divided (rounded up to a MB).
    shown = GridEngine().native_specification(
        spec_of(memory=4 << 30, cores=3, memory_resource="mem_free", parallel_env="threads"))
    assert shown is not None and "-l mem_free=1366M" in shown
    shown = GridEngine().native_specification(spec_of(cores=3, parallel_env="threads"))
    assert shown is not None and "-pe threads 3" in shown
    assert GridEngine().native_specification(spec_of(memory=(1 << 30) + 1)) == "-l h_vmem=1025M"


def test_resources_by_name_in_slurm_terms_with_native_spec_last() -> None:
    spec = spec_of(memory=(3 << 29) + 1, cores=4, gpus=2, project="lab", walltime=90, native_spec="--mem=100")
    assert Slurm().native_specification(spec) == \
        "-t 0:02 --cpus-per-task=4 --mem=1537 --gres=gres:gpu:2 --account=lab --mem=100 --no-requeue"


def test_hosts_to_avoid_are_excluded() -> None:
    assert GridEngine().native_specification(spec_of(avoid_hosts=("node1", "node2"))) == "-l h=!node1&!node2"
    assert Slurm().native_specification(spec_of(avoid_hosts=("node1", "node2"))) == "--exclude=node1,node2 --no-requeue"


def test_a_scheduler_not_known_takes_no_resource_by_name() -> None:
    with pytest.raises(ConfigurationError, match="memory=, cores= cannot be requested.*native_spec="):
        Scheduler().native_specification(spec_of(memory=1 << 30, cores=2))


@pytest.mark.parametrize("native_spec, instead", [
    ("-q all.q", "-p/--partition"),
    ("-l h_rt=3600", "-t 1:00"),
    ("--mem=1G -l h_vmem=2G", "--mem"),
    ("-pe smp 4", "--cpus-per-task"),
    ("-l gpu=1", "--gres"),
])
def test_grid_engine_spellings_are_refused_on_slurm_naming_the_slurm_option(native_spec: str, instead: str) -> None:
    with pytest.raises(ConfigurationError, match="Grid Engine's spelling") as caught:
        Slurm().native_specification(spec_of(native_spec=native_spec))
    assert instead in str(caught.value)


def test_the_squeue_listing_is_read_per_task() -> None:
    assert Slurm().parse_listing("7_1 RUNNING\n7_2 PENDING\n7_3 CANCELLED\n\n") == {
        "7_1": "RUNNING", "7_2": "PENDING", "7_3": "CANCELLED"}


QSTAT_XML = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running"><JB_job_number>49</JB_job_number><queue_name>all.q@node3</queue_name>
      <tasks>2</tasks></job_list>
    <job_list state="running"><JB_job_number>50</JB_job_number><queue_name></queue_name></job_list>
  </queue_info>
</job_info>
"""


def test_started_workers_are_listed_with_their_hosts() -> None:
    assert GridEngine().parse_started(QSTAT_XML) == {"49.2": "node3", "50": None}
    with pytest.raises(ValueError, match="qstat -xml"):
        GridEngine().parse_started("<job_info>")
    assert Slurm().parse_started("7_1 node1\n7_2 (null)\n7_3\n") == {"7_1": "node1", "7_2": None, "7_3": None}
    command = Slurm().started_command(["7", "8"])
    assert command is not None and "--jobs=7,8" in command
    assert Scheduler().started_command(["7"]) is None


def test_the_removal_hint_names_the_schedulers_own_command() -> None:
    assert GridEngine().removal_hint(["49", "50.3"]) == "qdel 49 50.3"
    assert Slurm().removal_hint(["238"]) == "scancel 238"
    assert "scheduler's own command" in Scheduler().removal_hint(["7"])


@pytest.mark.parametrize("scheduler, environment, worker", [
    (GridEngine(), {"JOB_ID": "49", "SGE_TASK_ID": "3"}, "49.3"),
    (Slurm(), {"SLURM_ARRAY_JOB_ID": "238", "SLURM_ARRAY_TASK_ID": "4", "SLURM_JOB_ID": "242", "JOB_ID": "9"},
     "238_4"),
])
def test_a_worker_finds_its_own_id_and_its_log_files(scheduler: Scheduler, environment: dict[str, str], worker: str,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    for name in ("SHEEPDOG_WORKER_ID", "JOB_ID", "SGE_TASK_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert worker_id_from_environment() == worker
    spec = WorkerSpec(python="python3", environment={}, working_directory=".", log_dir=str(tmp_path), job_name="j")
    # The placeholders the backend submits with expand to the same names the error messages quote.
    expanded = log_paths(spec, scheduler.log_id)["stderr"]
    expanded = expanded.replace("$JOB_ID", "49").replace("$TASK_ID", "3").replace("%A", "238").replace("%a", "4")
    assert expanded == log_paths(spec, worker)["stderr"]


@pytest.mark.slurm
def test_a_grid_engine_option_reaching_slurm_is_refused_before_anything_is_submitted(
        store: str, slurm: Cluster) -> None:
    with pytest.raises(ConfigurationError, match="--time"):
        sheepdog_drmaa.map(abs, [1], backend="drmaa", store=store, progress=False, native_spec="-l h_rt=600")
    assert not slurm.jobs()


@pytest.mark.slurm
def test_a_scheduler_not_known_gets_plain_drmaa_one_named_job_per_worker(
        store: str, slurm: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from sheepdog_drmaa.backends import drmaa as drmaa_backend
    monkeypatch.setattr(drmaa_backend, "identify", lambda implementation, drms: Scheduler())
    with caplog.at_level(logging.WARNING, logger="sheepdog_drmaa.backends"):
        sweep = sheepdog_drmaa.map_async(lambda x: x * 3, range(6), backend="drmaa", store=store, progress=False,
                                         workers=3)
        assert sweep.results() == [0, 3, 6, 9, 12, 15]
        assert {attempt.worker for attempt in sweep.attempts()} <= {f"sheepdog-{os.getpid()}-{n}"
                                                                    for n in range(1, 99)}
        with pytest.raises(WorkersCannotStart, match="status 1"):
            sheepdog_drmaa.map(abs, [1, 2], backend="drmaa", store=store, progress=False, python="/bin/false")
    # Removing workers that had just ended is no outage (slurm-drmaa raises the same InternalException for
    # both): the first sweep's end once waited outage_wait, 120 s, for nothing.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("sheepdog_drmaa.backends")
                and ("cannot reach" in r.getMessage() or "NOT removed" in r.getMessage())]
    wait_until(lambda: not slurm.jobs(), 30, "squeue to be empty")
