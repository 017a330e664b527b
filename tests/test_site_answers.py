"""A scheduler's answers to the site checks' commands (backends/answers.py): asked a round at a time,
remembered for a few minutes in this process and beside the store, and never trusted to refuse."""
from __future__ import annotations

import json
import os
import pathlib
import stat
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from sheepdog_drmaa.backends import WorkerSpec, answers, sites
from sheepdog_drmaa.backends.answers import REMEMBER_SECONDS, Answers, Command, remembered_in
from sheepdog_drmaa.backends.schedulers import GridEngine, Slurm
from sheepdog_drmaa.errors import ConfigurationError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Scheduler:
    """Commands answered from a table; records every command run."""

    def __init__(self, table: Mapping[Command, str | None]) -> None:
        self.table = dict(table)
        self.ran: list[Command] = []
        self.lock = threading.Lock()

    def __call__(self, command: Command) -> str | None:
        with self.lock:
            self.ran.append(command)
        return self.table.get(command)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / answers.FILE_NAME)


def test_an_answer_is_asked_once_while_fresh_and_again_once_old() -> None:
    clock, scheduler = Clock(), Scheduler({("qconf", "-sql"): "all.q\n"})
    remembered = Answers("ge", scheduler, clock)
    assert remembered.read("qconf", "-sql") == "all.q\n"
    clock.now += REMEMBER_SECONDS - 1
    assert remembered.read("qconf", "-sql") == "all.q\n"
    assert len(scheduler.ran) == 1
    clock.now += 2
    remembered.read("qconf", "-sql")
    assert len(scheduler.ran) == 2


def test_the_commands_of_one_round_are_asked_at_once() -> None:
    commands = [("qconf", "-se", f"node{i}") for i in range(4)]
    everyone_asking = threading.Barrier(len(commands), timeout=30)  # one at a time would never get past it

    def scheduler(command: Command) -> str:
        everyone_asking.wait()
        return command[-1]
    remembered = Answers("ge", scheduler)
    remembered.fetch(*commands)
    assert [remembered.read(*command) for command in commands] == ["node0", "node1", "node2", "node3"]


def test_answers_remembered_beside_the_store_spare_the_next_process_the_commands(path: str) -> None:
    clock = Clock()
    with remembered_in(path):
        Answers("ge", Scheduler({("qconf", "-sql"): "all.q\n", ("qconf", "-spl"): None}), clock).fetch(
            ("qconf", "-sql"), ("qconf", "-spl"))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        clock.now += 60
        later = Scheduler({})
        remembered = Answers("ge", later, clock)
        assert remembered.read("qconf", "-sql") == "all.q\n"
        assert remembered.read("qconf", "-spl") is None  # a failure is not remembered beyond its process
        assert later.ran == [("qconf", "-spl")]
        other_cell = Scheduler({("qconf", "-sql"): "other.q\n"})
        assert Answers("ge elsewhere", other_cell, clock).read("qconf", "-sql") == "other.q\n"
        assert Answers("ge", later, clock).read("qconf", "-sql") == "all.q\n"  # each cell's answers kept


@pytest.mark.parametrize("damage", ["not json", "[]", '{"version": 99, "sites": {}}',
                                    '{"version": 1, "sites": {"ge": [["qconf", 1, 2], 3, {}]}}',
                                    '{"version": 1, "sites": {"ge": {"x": 1}}}', "old", "shared"])
def test_a_damaged_old_or_shared_file_is_ignored_and_replaced(path: str, damage: str) -> None:
    clock = Clock()
    if damage in ("old", "shared"):
        with remembered_in(path):
            Answers("ge", Scheduler({("qconf", "-sql"): "stale.q\n"}), clock).fetch(("qconf", "-sql"))
        if damage == "shared":
            os.chmod(path, 0o644)
        else:
            clock.now += REMEMBER_SECONDS + 1
    else:
        with open(path, "w") as handle:
            handle.write(damage)
        os.chmod(path, 0o600)
    scheduler = Scheduler({("qconf", "-sql"): "all.q\n"})
    with remembered_in(path):
        assert Answers("ge", scheduler, clock).read("qconf", "-sql") == "all.q\n"
    assert scheduler.ran == [("qconf", "-sql")]
    with open(path) as handle:
        assert json.load(handle)["sites"]["ge"][0][2] == "all.q\n"


def test_a_file_that_cannot_be_written_only_goes_unremembered(tmp_path: pathlib.Path) -> None:
    with remembered_in(str(tmp_path / "missing" / answers.FILE_NAME)):
        assert Answers("ge", Scheduler({("qconf", "-sql"): "all.q\n"})).read("qconf", "-sql") == "all.q\n"


ALL_Q = "qname all.q\nhostlist @allhosts\nslots 4\npe_list make smp\nh_vmem INFINITY\ncomplex_values NONE\n"
CELL = {
    ("qconf", "-sq", "*"): ALL_Q,
    ("qconf", "-sc"): "#name shortcut type relop requestable consumable default urgency\n"
                      "h_vmem h_vmem MEMORY <= YES NO 0 0\nslots s INT <= YES YES 1 1000\n",
    ("qconf", "-se", "global"): "hostname global\ncomplex_values NONE\n",
    ("qconf", "-shgrp_resolved", "@allhosts"): "vm\n",
    ("qconf", "-se", "vm"): "hostname vm\ncomplex_values NONE\nload_values virtual_total=8G\n",
    ("qconf", "-spl"): "smp\n",
    ("qconf", "-sp", "smp"): "pe_name smp\nslots 999\n",
    ("qconf", "-sconf"): "max_aj_tasks 75000\n",  # read by the DRMAA backend, asked in the checks' first round
    ("qconf", "-sel"): "vm\n",
}


@pytest.fixture
def cell(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scheduler]:
    """A Grid Engine cell whose qconf answers come from a table (edit it to change the site)."""
    scheduler = Scheduler(CELL)
    monkeypatch.setattr(sites, "_command_output", scheduler)
    sites._answers.cache_clear()
    yield scheduler
    sites._answers.cache_clear()


def request(**resources: Any) -> WorkerSpec:
    return WorkerSpec(python="python3", environment={}, working_directory=".", log_dir=".", job_name="j",
                      **resources)


def test_grid_engine_requests_are_checked_against_the_cell(cell: Scheduler) -> None:
    sites.check_request(GridEngine(), request(cores=4, memory=1 << 30))
    with pytest.raises(ConfigurationError, match="cores=8: no host of any queue has that many slots"):
        sites.check_request(GridEngine(), request(cores=8))
    with pytest.raises(ConfigurationError, match="memory=16G: no host of any queue offers that much h_vmem"):
        sites.check_request(GridEngine(), request(memory=16 << 30))


def test_a_request_refused_on_remembered_answers_is_checked_again_on_fresh_ones(cell: Scheduler) -> None:
    sites.check_request(GridEngine(), request())
    cell.table[("qconf", "-sq", "*")] = ALL_Q + "\nqname new.q\nhostlist vm\nslots 4\n"  # added since
    sites.check_request(GridEngine(), request(queue="new.q"))
    with pytest.raises(ConfigurationError, match="no such queue; its queues are all.q, new.q"):
        sites.check_request(GridEngine(), request(queue="gone.q"))


def test_answers_remembered_leave_nothing_to_ask(cell: Scheduler, path: str) -> None:
    with remembered_in(path):
        sites.check_request(GridEngine(), request(cores=2))
    asked = len(cell.ran)
    sites._answers.cache_clear()  # as in a fresh process
    with remembered_in(path):
        sites.check_request(GridEngine(), request(cores=2))
    assert len(cell.ran) == asked


def test_slurm_requests_are_checked_against_the_cluster_and_a_named_partition_in_one_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = ("sinfo", "--noheader", "--format=%P")
    nodes_of = {part: ("sinfo", "--noheader", "--Node", f"--partition={part}", "--format=%N|%c|%m|%G|%o")
                for part in ("debug", "big")}
    scheduler = Scheduler({partitions: "debug*\n", nodes_of["debug"]: "n1|4|8000|(null)|n1\n",
                           nodes_of["big"]: "n2|64|512000|gpu:2|n2\n"})
    rounds: list[tuple[Command, ...]] = []
    fetch = Answers.fetch

    def recorded_fetch(self: Answers, *commands: Command) -> None:
        rounds.append(commands)
        fetch(self, *commands)
    monkeypatch.setattr(sites, "_command_output", scheduler)
    monkeypatch.setattr(Answers, "fetch", recorded_fetch)
    sites._answers.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="cores=8: no node of partition debug has that many CPUs"):
            sites.check_request(Slurm(), request(cores=8))
        scheduler.table[partitions] = "debug*\nbig\n"  # a partition added since the answers were read
        rounds.clear()
        sites.check_request(Slurm(), request(cores=8, queue="big"))
        assert rounds[0] == (partitions, nodes_of["big"], Slurm.config_command, Slurm.hosts_command)
        with pytest.raises(ConfigurationError, match="no such partition; its partitions are debug, big"):
            sites.check_request(Slurm(), request(queue="gone"))
    finally:
        sites._answers.cache_clear()


def test_other_commands_that_describe_the_site_are_remembered_too(cell: Scheduler, path: str) -> None:
    cell.table[("qconf", "-sel")] = "vm\n"
    with remembered_in(path):
        assert sites.read(GridEngine(), ("qconf", "-sel")) == "vm\n"
    sites._answers.cache_clear()  # as in a fresh process
    with remembered_in(path):
        assert sites.read(GridEngine(), ("qconf", "-sel")) == "vm\n"
    assert cell.ran.count(("qconf", "-sel")) == 1
