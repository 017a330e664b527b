"""Removals kept while the scheduler is unreachable: tried again with its own command in the background,
never blocking the sweep, and done once it answers (backends/removals.py)."""
from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence
from typing import NoReturn

import pytest
from helpers import wait_until

from sheepdog_drmaa.backends.removals import KeptRemovals
from sheepdog_drmaa.backends.schedulers import GridEngine, Slurm


def test_grid_engine_qdel_answers_count_as_removed_only_when_every_line_says_so() -> None:
    grid_engine = GridEngine()
    # Measured on Son of Grid Engine 8.1.9: one id gone, the others registered for deletion (exit 1).
    assert grid_engine.removed(1, 'root has registered the job-array task 117.2 for deletion\n'
                                  'denied: job "999998" does not exist\n')
    assert grid_engine.removed(0, "job 117 is already in deletion\n")
    assert not grid_engine.removed(1, 'unable to send message to qmaster using port 6444 on host "vm": got send '
                                      'error\n')
    assert not grid_engine.removed(1, "")
    assert Slurm().removed(0, "") and not Slurm().removed(1, "scancel: error: Unable to contact slurm controller")


class Scripted(GridEngine):
    """Grid Engine whose removal command is a script of the test's."""

    def __init__(self, script: pathlib.Path) -> None:
        self.remove_command = str(script)


@pytest.fixture
def remover(tmp_path: pathlib.Path) -> pathlib.Path:
    """A removal command that fails as qdel does while qmaster is down until the file 'up' exists,
    and records the ids it was given."""
    script = tmp_path / "remove"
    script.write_text(f"""#!/bin/sh
[ -f {tmp_path}/hang ] && exec sleep 60
if [ ! -f {tmp_path}/up ]; then echo 'unable to send message to qmaster using port 6444'; exit 1; fi
echo "$@" >>{tmp_path}/removed
for id in "$@"; do echo "root has registered the job-array task $id for deletion"; done
""")
    script.chmod(0o755)
    return tmp_path


def unused_send(targets: Sequence[str]) -> NoReturn:
    raise AssertionError("a scheduler with a removal command is not asked through DRMAA")


def test_kept_removals_wait_for_the_scheduler_and_go_in_one_command_once_it_answers(
        remover: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    kept = KeptRemovals(Scripted(remover / "remove"), unused_send)

    def retried_then_idle() -> bool:
        kept.retry(float("-inf"))
        return not kept.command.busy

    def retried_then_empty() -> bool:
        kept.retry(float("-inf"))
        return not kept
    with caplog.at_level(logging.INFO, logger="sheepdog_drmaa"):
        kept.keep(["12.3", "13"], "got send error")
        kept.keep(["14"], "unreachable")
        assert kept.outage and list(kept) == ["12.3", "13", "14"]
        kept.retry(answered_at=time.monotonic())  # a listing answered after the failure: try at once
        wait_until(retried_then_idle, 10, "the first try to end")
        assert kept and kept.outage, "kept removals were dropped while the scheduler did not answer"
        (remover / "up").touch()
        kept.retry(answered_at=time.monotonic())
        wait_until(retried_then_empty, 10, "the kept removals to be done")
    assert not kept.outage
    assert (remover / "removed").read_text().split() == ["12.3", "13", "14"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "cannot reach" in warnings[0] and "answers again" in warnings[1], warnings


def test_a_removal_command_that_hangs_never_blocks_and_is_given_up_after_its_timeout(remover: pathlib.Path) -> None:
    (remover / "hang").touch()
    kept = KeptRemovals(Scripted(remover / "remove"), unused_send, command_timeout=1.0)
    kept.keep(["21"], "unreachable")
    began = time.monotonic()
    kept.retry(answered_at=time.monotonic())
    assert kept.command.busy and time.monotonic() - began < 0.5

    def retried_then_idle() -> bool:
        kept.retry(float("-inf"))
        return not kept.command.busy
    wait_until(retried_then_idle, 10, "the hung command to be killed")
    assert list(kept) == ["21"] and kept.outage
    kept.stop()
