"""How the DRMAA backend learns of ended workers on Slurm (backends/exits.py): the listing of the
sweep's arrays runs in the background, so that a controller that does not answer (squeue takes 18 s
to fail while slurmctld is down) never holds up the driver. Tested with a scripted listing command
and a stand-in for the DRMAA session, at the boundary where the backend hands them in."""
from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_until

from sheepdog_drmaa.backends.exits import ExitCollector, ExitTimings, JobNames
from sheepdog_drmaa.backends.schedulers import GridEngine, Slurm
from sheepdog_drmaa.model import ExitInfo

FAST = ExitTimings(list_min=0.05, list_max=0.2)


class _Errors:
    class DrmaaException(Exception):
        pass

    class ExitTimeoutException(DrmaaException):
        pass

    class InvalidJobException(DrmaaException):
        pass

    class DrmCommunicationException(DrmaaException):
        pass

    class TryLaterException(DrmaaException):
        pass


DRMAA = SimpleNamespace(errors=_Errors, Session=SimpleNamespace(JOB_IDS_SESSION_ANY="ANY", TIMEOUT_NO_WAIT=0),
                        JobState=SimpleNamespace(DONE="done", FAILED="failed", UNDETERMINED="undetermined"))


class EndedJobs:
    """The DRMAA session as the collector uses it: ``wait`` hands out the jobs the test has ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.waited: list[str] = []

    def wait(self, job: str, timeout: int) -> Any:
        if job == "ANY":
            if not self.ended:
                raise _Errors.ExitTimeoutException()
            job = self.ended.pop(0)
        elif job not in self.ended:
            raise _Errors.ExitTimeoutException()
        else:
            self.ended.remove(job)
        self.waited.append(job)
        return SimpleNamespace(jobId=job, hasExited=True, exitStatus=0, hasSignal=False, terminatedSignal="",
                               hasCoreDump=False, wasAborted=False, resourceUsage={})

    def jobStatus(self, job: str) -> str:  # noqa: N802 (the DRMAA name)
        return "running"


class ScriptedSlurm(Slurm):
    """Slurm whose listing command is the test's script, printing the file ``listing`` once ``down`` is gone."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        script = directory / "squeue"
        script.write_text(f"""#!/bin/sh
while [ -f {directory}/down ]; do sleep 0.02; done
[ -f {directory}/fails ] && {{ echo 'slurm_load_jobs error: Unable to contact slurm controller'; exit 1; }}
cat {directory}/listing
""")
        script.chmod(0o755)
        (directory / "listing").write_text("")

    def listing_command(self, arrays: Sequence[str]) -> list[str] | None:
        return [str(self.directory / "squeue"), *arrays]


def collector(scheduler: Any, session: EndedJobs, owners: dict[str, ExitCollector] | None = None,
              lock: threading.RLock | None = None) -> ExitCollector:
    return ExitCollector(DRMAA, session, scheduler, lock or threading.RLock(), {} if owners is None else owners,
                         JobNames(), FAST)


def next_end(exits: ExitCollector, within: float = 30) -> ExitInfo:
    return wait_until(lambda: exits.wait_any(0.05), within, "a worker's end")


def test_a_listing_that_does_not_answer_never_holds_the_driver(tmp_path: pathlib.Path) -> None:
    (tmp_path / "down").touch()  # the controller does not answer: the listing hangs until the test says
    session = EndedJobs()
    exits = collector(ScriptedSlurm(tmp_path), session)
    exits.track(["7_1", "7_2"])
    began = time.monotonic()
    for _ in range(5):
        assert exits.wait_any(0.1) is None
    waited = time.monotonic() - began
    assert waited < 10, f"wait_any(0.1) five times took {waited:.1f} s: it waited for the listing"
    (tmp_path / "listing").write_text("7_1 COMPLETED\n7_2 RUNNING\n")
    session.ended.append("7_1")
    (tmp_path / "down").unlink()  # it answers
    ended = next_end(exits)
    assert (ended.worker, ended.state, ended.exit_status) == ("7_1", "COMPLETED", 0)
    assert exits.unreaped.workers() == ["7_2"] and session.waited == ["7_1"]
    exits.stop()


def test_workers_submitted_while_a_listing_runs_are_not_judged_by_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "down").touch()
    session = EndedJobs()
    exits = collector(ScriptedSlurm(tmp_path), session)
    exits.track(["7_1"])
    assert exits.wait_any(0.1) is None  # the listing of array 7 has started
    exits.track(["8_1"])  # absent from that listing, which would read as ended and purged
    session.ended.extend(["7_1", "8_1"])  # the stand-in would hand out 8_1 too if it were asked
    (tmp_path / "listing").write_text("7_1 COMPLETED\n")
    (tmp_path / "down").unlink()
    assert next_end(exits).worker == "7_1"
    (tmp_path / "listing").write_text("8_1 RUNNING\n")
    assert exits.wait_any(0.5) is None
    assert exits.unreaped.workers() == ["8_1"] and session.waited == ["7_1"]
    exits.stop()


def test_a_failing_listing_is_an_outage_said_once_and_its_end_said_too(tmp_path: pathlib.Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "fails").touch()
    exits = collector(ScriptedSlurm(tmp_path), EndedJobs())
    exits.track(["7_1"])
    with caplog.at_level(logging.DEBUG, logger="sheepdog_drmaa"):
        wait_until(lambda: exits.wait_any(0.05) is None and caplog.text.count("Unable to contact") >= 3 or None, 30,
                   "three failed listings")
        assert exits.saw_outage
        said = [r for r in caplog.records if "cannot list" in r.getMessage()]
        assert [r.levelno for r in said[:3]] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        (tmp_path / "fails").unlink()
        (tmp_path / "listing").write_text("7_1 RUNNING\n")
        wait_until(lambda: exits.wait_any(0.05) is None and "listed again" in caplog.text or None, 30,
                   "a listing to succeed")
    exits.stop()


def test_an_end_passed_on_by_another_backend_leaves_the_owner_unreaped_list(tmp_path: pathlib.Path) -> None:
    """Grid Engine: wait(ANY) may hand one sweep's end to another sweep of the same process."""
    session, lock = EndedJobs(), threading.RLock()
    owners: dict[str, ExitCollector] = {}
    first, second = (collector(GridEngine(), session, owners, lock) for _ in range(2))
    first.track(["7.1"])
    second.track(["8.1"])
    session.ended.append("8.1")
    assert first.wait_any(0.2) is None  # it took 8.1's end, and passed it on
    assert second.wait_any(0) is not None
    assert second.unreaped.workers() == [], "a worker reported ended is still waited for (a second end would come)"
