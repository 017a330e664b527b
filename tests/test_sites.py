"""Reading what the live scheduler offers (backends/sites.py): Grid Engine's values, Slurm's gres."""
from __future__ import annotations

import pytest

from sheepdog_drmaa.backends import WorkerSpec, sites
from sheepdog_drmaa.backends.schedulers import Scheduler
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
