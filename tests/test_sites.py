"""Reading what the live scheduler offers (backends/sites.py): Grid Engine's values, Slurm's gres."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from sheepdog_drmaa.backends import WorkerSpec, sites
from sheepdog_drmaa.backends.schedulers import GridEngine, Scheduler, Slurm
from sheepdog_drmaa.backends.sites import _gpu_count, _per_host, parse_grid_engine_memory


def test_grid_engine_memory_values_are_read_in_its_units() -> None:
    assert parse_grid_engine_memory("8G") == 8 << 30 and parse_grid_engine_memory("1.5g") == 1.5e9
    assert parse_grid_engine_memory("512") == 512 and parse_grid_engine_memory("INFINITY") == float("inf")


def test_per_host_queue_settings_are_read_host_first() -> None:
    groups = {"@big": {"vm"}}
    assert _per_host("8,[vm=4],[@big=2]", "vm", groups) == "4"
    assert _per_host("8,[@big=2]", "vm", groups) == "2"
    assert _per_host("8,[other=2]", "vm", groups) == "8"


@pytest.mark.parametrize("gres, count", [("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,shard:8", 2),
                                         ("(null)", 0), ("mps:100", 0)])
def test_gpus_are_counted_in_sinfo_gres(gres: str, count: int) -> None:
    assert _gpu_count(gres) == count


def test_plain_drmaa_is_checked_against_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sites, "_command_output", lambda command: pytest.fail(f"ran {command}"))
    sites.check_request(Scheduler(), WorkerSpec(python="python3", environment={}, working_directory=".",
                                                log_dir=".", job_name="j", queue="any.q"))


# ------------------------------------------------- the hosts a request can run on, and which to exclude

PARTITIONS = ("sinfo", "--noheader", "--format=%P")


def nodes_of(partition: str) -> tuple[str, ...]:
    return ("sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%c|%m|%G|%o")


SLURM = {PARTITIONS: "debug*\nmulti\n",
         nodes_of("debug"): "vm|8|8000|gpu:2|vm\n",
         nodes_of("multi"): "".join(f"snode{i}|4|2000|(null)|10.78.0.1{i}\n" for i in (1, 2, 3))}


@pytest.fixture
def slurm_site(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[str, ...], str | None]]:
    """A Slurm cluster whose sinfo answers from a table the test may change."""
    table: dict[tuple[str, ...], str | None] = dict(SLURM)
    monkeypatch.setattr(sites, "_command_output", lambda command: table.get(command))
    sites._answers.cache_clear()
    yield table
    sites._answers.cache_clear()


def spec(**fields: Any) -> WorkerSpec:
    return WorkerSpec(python="python3", environment={}, working_directory=".", log_dir=".", job_name="j", **fields)


def test_a_slurm_request_runs_on_the_nodes_of_its_partition_reached_at_their_node_address(
        slurm_site: dict[tuple[str, ...], str | None]) -> None:
    assert sites.request_hosts(Slurm(), spec()) == [sites.Host("vm", "vm")]  # the default partition
    multi = [sites.Host(f"snode{i}", f"10.78.0.1{i}") for i in (1, 2, 3)]
    assert sites.request_hosts(Slurm(), spec(queue="multi")) == multi
    assert sites.request_hosts(Slurm(), spec(native_spec="--partition=multi")) == multi
    assert sites.request_hosts(Slurm(), spec(queue="gone")) is None  # the check refuses it, naming the partitions
    slurm_site[PARTITIONS] = None  # slurmctld does not answer
    sites._answers.cache_clear()
    assert sites.request_hosts(Slurm(), spec(queue="multi")) is None


def test_only_hosts_slurm_knows_are_excluded_and_never_all_of_them(
        slurm_site: dict[tuple[str, ...], str | None], caplog: pytest.LogCaptureFixture) -> None:
    assert sites.exclusions(Slurm(), spec(queue="multi", avoid_hosts=("snode2",))) == ("snode2",)
    assert sites.exclusions(Slurm(), spec(queue="multi", avoid_hosts=("ghost", "snode1"))) == ("snode1",)
    assert "not excluding ghost" in caplog.text
    with caplog.at_level(logging.WARNING, logger="sheepdog_drmaa.backends.sites"):
        assert sites.exclusions(Slurm(), spec(queue="multi", avoid_hosts=("snode1", "snode2", "snode3"))) == ()
    assert "every host this request can run on is to be avoided (snode1, snode2, snode3)" in caplog.text
    assert sites.exclusions(Slurm(), spec(avoid_hosts=("vm",))) == ()  # the default partition's one node
    slurm_site[PARTITIONS] = None
    sites._answers.cache_clear()
    assert sites.exclusions(Slurm(), spec(queue="multi", avoid_hosts=("ghost",))) == ("ghost",)  # not known: as asked


def test_a_grid_engine_request_runs_on_the_hosts_of_the_queues_that_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = "qname {name}\nhostlist {hosts}\npe_list smp\ncomplex_values {complexes}\n"
    table = {("qconf", "-sq", "*"): queue.format(name="all.q", hosts="vm", complexes="NONE")
             + queue.format(name="nodes.q", hosts="@nodes", complexes="multihost=TRUE"),
             ("qconf", "-sc"): "multihost mhost BOOL == FORCED NO FALSE 0\n",
             ("qconf", "-shgrp_resolved", "@nodes"): "node1 node2 node3\n"}
    monkeypatch.setattr(sites, "_command_output", lambda command: table.get(command))
    sites._answers.cache_clear()
    try:
        assert sites.request_hosts(GridEngine(), spec()) == [sites.Host("vm", "vm")]  # nodes.q is FORCED
        nodes = [sites.Host(f"node{i}", f"node{i}") for i in (1, 2, 3)]
        assert sites.request_hosts(GridEngine(), spec(queue="nodes.q", native_spec="-l mhost=1")) == nodes
        assert sites.exclusions(GridEngine(), spec(queue="nodes.q", native_spec="-l mhost=1",
                                                   avoid_hosts=("node1", "node2", "node3"))) == ()
        assert sites.exclusions(GridEngine(), spec(queue="nodes.q", native_spec="-l mhost=1",
                                                   avoid_hosts=("node3",))) == ("node3",)
    finally:
        sites._answers.cache_clear()


def test_a_parallel_environment_given_for_some_hosts_only_counts_as_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {("qconf", "-sq", "*"): "qname gpu.q\nhostlist vm\npe_list make,[@gpu=smp mpi]\ncomplex_values NONE\n",
             ("qconf", "-sc"): ""}
    monkeypatch.setattr(sites, "_command_output", lambda command: table.get(command))
    sites._answers.cache_clear()
    try:
        assert sites.request_hosts(GridEngine(), spec(cores=2)) == [sites.Host("vm", "vm")]  # smp, on @gpu
        assert sites.request_hosts(GridEngine(), spec(cores=2, parallel_env="threads")) == []
    finally:
        sites._answers.cache_clear()
