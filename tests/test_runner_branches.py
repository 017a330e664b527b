"""The runner's rare branches, driven deterministically through a backend that injects the rare event.

The workers are real local processes; only the scheduler's answers are bent: a submission that
cannot reach the scheduler, workers queued far beyond the free slots, a scheduler that never
reports the end of the jobs it was asked to remove. And a store written by version 0.1.0.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import sqlite3
import time
from collections.abc import Iterable, Sequence

import pytest

import sheepdog_drmaa
from sheepdog_drmaa.backends import WorkerSpec
from sheepdog_drmaa.backends.local import LocalBackend
from sheepdog_drmaa.driver import Timing, use_timing
from sheepdog_drmaa.errors import SchedulerUnreachable, SubmissionRefused
from sheepdog_drmaa.model import ExitInfo
from sheepdog_drmaa.store import SCHEMA_VERSION, Store


class BentBackend(LocalBackend):
    """The local backend, recording every call, with the scheduler's rare answers on request."""

    def __init__(self, slots: int = 2, unreachable_submissions: int = 0, swallow_exits: bool = False,
                 slow_submission: float = 0.0, refused_submissions: Iterable[int] = ()) -> None:
        super().__init__(slots=slots)
        self.refused_submissions = set(refused_submissions)  # which submissions (1, 2, ...) are refused
        self.unreachable_submissions = unreachable_submissions
        self.swallow_exits = swallow_exits
        self.slow_submission = slow_submission  # seconds the scheduler takes to answer, its workers already started
        self.submissions: list[int] = []
        self.terminations: list[list[str]] = []

    def submit(self, count: int, spec: WorkerSpec) -> list[str]:
        self.submissions.append(count)
        if self.unreachable_submissions:
            self.unreachable_submissions -= 1
            raise SchedulerUnreachable("the test scheduler is unreachable")
        if len(self.submissions) in self.refused_submissions:
            raise SubmissionRefused("the test scheduler refused the workers' job: too many jobs for this user")
        ids = super().submit(count, spec)
        time.sleep(self.slow_submission)
        return ids

    def wait_any(self, timeout: float) -> ExitInfo | None:
        if self.swallow_exits and self.terminations:
            time.sleep(timeout)  # the scheduler never says that the removed workers are gone
            return None
        return super().wait_any(timeout)

    def terminate(self, worker_ids: Sequence[str]) -> None:
        self.terminations.append(list(worker_ids))
        super().terminate(worker_ids)


@pytest.fixture
def bent() -> type[BentBackend]:
    """A BentBackend built with the given settings, for map(backend=...)."""
    return BentBackend


def test_a_submission_the_scheduler_could_not_take_is_tried_again(bent: type[BentBackend], store: str) -> None:
    backend = bent(unreachable_submissions=2)
    with use_timing(Timing(submit_retry=0.2)):
        assert sheepdog_drmaa.map(abs, [-1, -2, -3], backend=backend, store=store, progress=False) == [1, 2, 3]
    assert backend.submissions[:3] == [3, 3, 3]  # refused twice, then taken


def slow_at_the_end(x: int) -> int:
    if x >= 38:  # the last two tasks keep the sweep running while the surplus goes
        time.sleep(1.5)
    return x


def test_surplus_queued_workers_are_removed_in_batches_while_the_sweep_runs(
        bent: type[BentBackend], store: str) -> None:
    backend = bent(slots=2)
    with use_timing(Timing(removal_batch=7)):
        assert sheepdog_drmaa.map(slow_at_the_end, range(40), backend=backend, store=store,
                                  progress=False) == list(range(40))
    sizes = [len(batch) for batch in backend.terminations]
    # 38 workers queued beyond the 2 slots: removed 7 at a time, one batch per turn of the loop.
    assert sizes[:6] == [7, 7, 7, 7, 7, 3], sizes
    removed = [worker for batch in backend.terminations[:6] for worker in batch]
    assert len(set(removed)) == 38


def sleep_long(x: int) -> None:
    time.sleep(60)


def test_shutting_down_does_not_wait_past_the_reap_deadline_for_a_silent_scheduler(
        bent: type[BentBackend], store: str) -> None:
    backend = bent(swallow_exits=True)
    with use_timing(Timing(reap=1.0)):
        sweep = sheepdog_drmaa.map_async(sleep_long, [1, 2], backend=backend, store=store, progress=False, workers=2)
    deadline = time.monotonic() + 30
    while sweep.status()["running"] < 2:
        assert time.monotonic() < deadline, "the tasks never started"
        time.sleep(0.05)
    started = time.monotonic()
    sweep.cancel(timeout=30)
    assert sweep.wait(0) and time.monotonic() - started < 10
    assert backend.terminations  # the running workers were asked to go


OLD_SCHEMA = """
CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT UNIQUE, created REAL NOT NULL, updated REAL NOT NULL,
    n_tasks INTEGER NOT NULL, state TEXT NOT NULL, function BLOB NOT NULL, function_digest TEXT NOT NULL,
    args_digest TEXT NOT NULL, options TEXT NOT NULL, owner_pid INTEGER, owner_host TEXT, owner_seen REAL);
CREATE TABLE tasks (sweep_id TEXT NOT NULL, idx INTEGER NOT NULL, args BLOB NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, result BLOB, error BLOB, PRIMARY KEY (sweep_id, idx)) WITHOUT ROWID;
CREATE TABLE attempts (sweep_id TEXT NOT NULL, task INTEGER NOT NULL, number INTEGER NOT NULL, worker TEXT NOT NULL,
    host TEXT, started REAL NOT NULL, ended REAL, cause TEXT, detail TEXT,
    PRIMARY KEY (sweep_id, task, number)) WITHOUT ROWID;
CREATE TABLE workers (sweep_id TEXT NOT NULL, id TEXT NOT NULL, submitted REAL NOT NULL, ended REAL,
    PRIMARY KEY (sweep_id, id)) WITHOUT ROWID;
"""


def test_a_store_written_by_version_0_1_is_upgraded_and_its_sweep_resumes(store: str, tmp_path: pathlib.Path) -> None:
    import os
    os.makedirs(os.path.dirname(store))
    first = sheepdog_drmaa.map(abs, [-1, -2, -3], backend="local", store=str(tmp_path / "new.sqlite"), name="old",
                               progress=False)
    assert first == [1, 2, 3]
    with contextlib.closing(sqlite3.connect(str(tmp_path / "new.sqlite"))) as new, \
            contextlib.closing(sqlite3.connect(store)) as old:
        old.executescript(OLD_SCHEMA)
        sweep = new.execute("SELECT id, name, created, updated, n_tasks, state, function, function_digest, "
                            "args_digest, options FROM sweeps").fetchone()
        old.execute("INSERT INTO sweeps VALUES (?,?,?,?,?,?,?,?,?,?,NULL,NULL,NULL)", sweep)
        tasks = new.execute("SELECT sweep_id, idx, args, state, attempts, result, error FROM tasks").fetchall()
        old.executemany("INSERT INTO tasks VALUES (?,?,?,?,?,?,?)", tasks)
        old.execute("UPDATE tasks SET state = 'pending', result = NULL WHERE idx = 2")
        old.commit()
    assert sheepdog_drmaa.map(abs, [-1, -2, -3], backend="local", store=store, name="old", progress=False) == [1, 2, 3]
    with contextlib.closing(sqlite3.connect(store)) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in upgraded.execute("PRAGMA table_info(workers)")}
    assert {"host", "process_group"} <= columns
    assert Store(store, readonly=True).counts(sweep[0]) == {"done": 3}


def test_workers_that_start_before_their_submission_returns_are_asked_to_say_hello_again(
        bent: type[BentBackend], store: str) -> None:
    """The scheduler starts the workers and answers the submission only later (the client submits
    outside its lock): their hellos come from ids it does not know yet, and must not send them away."""
    backend = bent(slots=4, slow_submission=3.0)
    started = time.monotonic()
    assert sheepdog_drmaa.map(abs, range(-20, 0), backend=backend, store=store, progress=False,
                              workers=4) == list(range(20, 0, -1))
    assert backend.submissions == [4]  # the first workers were kept, none replaced
    assert time.monotonic() - started >= 3.0


def test_a_refusal_while_workers_are_alive_is_tried_again_and_one_with_none_alive_ends_the_sweep(
        bent: type[BentBackend], store: str, caplog: pytest.LogCaptureFixture) -> None:
    # The second submission hits a per-user limit while two workers of the first wait for a slot.
    backend = bent(slots=2, refused_submissions={2})
    with use_timing(Timing(refused_retry=0.5)):
        assert sheepdog_drmaa.map(abs, range(-8, 0), backend=backend, store=store, progress=False, workers=4,
                                  tasks_per_worker=1) == list(range(8, 0, -1))
    assert len(backend.submissions) > 2 and "still alive, so trying again" in caplog.text
    refusing = bent(slots=2, refused_submissions={1})  # refused with no worker alive: nothing could ever run
    with pytest.raises(SubmissionRefused, match="too many jobs"):
        sheepdog_drmaa.map(abs, range(-6, 0), backend=refusing, store=store, progress=False, workers=2)


def freeze_my_worker_once(directory: str, x: int) -> int:
    """Task 0's first run stops its whole worker (as a frozen node does), naming it in a file; its retry
    waits until the test's scheduler has said how that worker's job ended."""
    base = pathlib.Path(directory)
    if x == 0 and not (base / "frozen").exists():
        (base / "frozen").write_text(os.environ["SHEEPDOG_WORKER_ID"])
        os.killpg(os.getpgrp(), signal.SIGSTOP)
    if x == 0:
        deadline = time.monotonic() + 60
        while not (base / "told").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return x


class NodeLossBackend(BentBackend):
    """The frozen worker's end is reported as Slurm reports a job whose node failed (NODE_FAIL), or
    never, as Slurm keeps a job COMPLETING while its node does not answer."""

    def __init__(self, directory: pathlib.Path, report: str) -> None:
        super().__init__(slots=2)
        self.directory, self.report = directory, report

    def wait_any(self, timeout: float) -> ExitInfo | None:
        info = super().wait_any(timeout)
        frozen = self.directory / "frozen"
        if info is None or not frozen.exists() or info.worker != frozen.read_text():
            return info
        (self.directory / "told").touch()
        return ExitInfo(info.worker, aborted=True, state="NODE_FAIL") if self.report == "node_fail" else None


@pytest.mark.parametrize("report", ["node_fail", "never"])
def test_a_worker_lost_with_its_node_is_retried_once_named_in_its_record_and_not_waited_for(
        store: str, tmp_path: pathlib.Path, report: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = NodeLossBackend(tmp_path, report)
    with caplog.at_level(logging.WARNING, logger="sheepdog_drmaa.driver"):
        sweep = sheepdog_drmaa.map_async(freeze_my_worker_once, [(str(tmp_path), x) for x in range(4)],
                                         backend=backend, store=store, progress=False, workers=2, name="lost",
                                         heartbeat_interval=0.2, heartbeat_timeout=1.5)
        assert sweep.wait(60), "the sweep did not end"
    assert sweep.results() == [0, 1, 2, 3]
    frozen = (tmp_path / "frozen").read_text()
    first, second = sweep.attempts(0)
    assert (first.worker, first.cause, second.cause) == (frozen, "lost", "result")
    summary = first.detail["summary"]
    assert "no sign of life from its worker" in summary
    assert ("NODE_FAIL" in summary) is (report == "node_fail"), summary
    assert [len(sweep.attempts(x)) for x in (1, 2, 3)] == [1, 1, 1]  # counted once each
    not_waited = [r.getMessage() for r in caplog.records if "did not wait for" in r.getMessage()]
    if report == "never":
        assert len(not_waited) == 1 and frozen in not_waited[0] and "COMPLETING" in not_waited[0], not_waited
    else:
        assert not not_waited, not_waited
