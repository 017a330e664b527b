"""The Executor: concurrent.futures on the cluster, as one sweep that grows as calls are submitted.
On every backend: results, the user's own exceptions, a task killed by SIGKILL, cancelling a
call not started, shutdown with cancel_futures, idle workers leaving, a named Executor's memory."""
from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import BackendName, cli, no_job_left, sweep_jobs, wait_until

import sheepdog_drmaa
from sheepdog_drmaa.errors import TaskFailed
from sheepdog_drmaa.executor import Executor, RemoteTraceback
from sheepdog_drmaa.store import Store


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


class OwnError(Exception):
    """An exception class of the user's own."""


def raise_own(x: int) -> int:
    raise OwnError(f"point {x} is bad")


def runs(directory: pathlib.Path, key: object) -> int:
    path = directory / f"{key}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def noted(directory: str, key: object) -> int:
    """Note one run of ``key``; how many runs there have been."""
    with open(os.path.join(directory, f"{key}.runs"), "a") as handle:
        handle.write(f"{os.getpid()}\n")
    with open(os.path.join(directory, f"{key}.runs")) as handle:
        return len(handle.readlines())


def killed_first_time(directory: str, x: int) -> int:
    if noted(directory, x) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def killed_always(directory: str, x: int) -> int:
    noted(directory, x)
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def held(directory: str, key: str) -> str:
    """Run until the test lets go (the file ``release`` appears), at most 90 s."""
    noted(directory, key)
    deadline = time.monotonic() + 90
    while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return key


def counted(directory: str, x: int) -> int:
    noted(directory, x)
    return x * 10


@pytest.fixture
def executor(backend: BackendName, store: str) -> Iterator[Any]:
    """Executors on the test's backend and store, each shut down after the test."""
    made: list[Executor] = []

    def make(**options: Any) -> Executor:
        options.setdefault("progress", False)
        made.append(Executor(backend=str(backend), store=store, **options))
        return made[-1]
    yield make
    for each in made:
        each.shutdown(cancel_futures=True)


def test_submit_map_and_as_completed_run_different_functions_on_the_cluster(executor: Any, store: str) -> None:
    ex = executor(max_workers=4)
    squares = {ex.submit(square, x): x for x in range(20)}
    sums = [ex.submit(add, x, b=100) for x in range(5)]
    seen = {squares[f]: f.result() for f in concurrent.futures.as_completed(squares, timeout=120)}
    assert seen == {x: x * x for x in range(20)}
    assert [f.result() for f in sums] == [x + 100 for x in range(5)]
    assert list(ex.map(add, range(6), range(6), timeout=120)) == [2 * x for x in range(6)]
    done, not_done = concurrent.futures.wait(sums, timeout=0)
    assert len(done) == 5 and not not_done
    shown = json.loads(cli(store, "status", ex.sweep_id, "--json").stdout)
    assert shown["tasks"] == 31 and shown["counts"]["done"] == 31 and shown["state"] == "running"
    ex.shutdown()
    assert Store(store, readonly=True).sweep(ex.sweep_id).state == "finished"  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_calls_submitted_together_go_out_as_one_bulk_array(executor: Any, store: str) -> None:
    ex = executor(max_workers=6)
    futures = [ex.submit(square, x) for x in range(30)]
    assert [f.result(timeout=120) for f in futures] == [x * x for x in range(30)]
    assert len(sweep_jobs(store, ex.sweep_id)) == 1


def test_the_users_own_exception_comes_back_with_its_remote_traceback(executor: Any) -> None:
    ex = executor(max_workers=2)
    future = ex.submit(raise_own, 7)
    with pytest.raises(OwnError, match="point 7 is bad") as raised:
        future.result(timeout=120)
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "raise_own" in str(cause) and "OwnError" in str(cause)
    assert ex.submit(square, 3).result(timeout=120) == 9  # the executor goes on


def test_a_call_killed_by_sigkill_is_retried_then_reported_with_its_record(executor: Any,
                                                                           tmp_path: pathlib.Path) -> None:
    ex = executor(max_workers=2, retries=1)
    retried = ex.submit(killed_first_time, str(tmp_path), 1)
    broken = ex.submit(killed_always, str(tmp_path), 2)
    assert retried.result(timeout=120) == 1 and runs(tmp_path, 1) == 2
    with pytest.raises(TaskFailed) as raised:
        broken.result(timeout=120)
    failure = raised.value.failure
    assert failure.cause == "signal" and failure.attempts == 2 and runs(tmp_path, 2) == 2
    assert "SIGKILL" in failure.summary and "SIGKILL" in str(raised.value)
    assert failure.args == (str(tmp_path), 2) and f"({str(tmp_path)!r}, 2)" in str(raised.value)


def test_cancel_takes_back_a_call_not_started_and_not_a_running_one(executor: Any, tmp_path: pathlib.Path) -> None:
    ex = executor(max_workers=1, tasks_per_worker=1)
    running = ex.submit(held, str(tmp_path), "first")
    waiting = ex.submit(held, str(tmp_path), "second")
    wait_until(lambda: runs(tmp_path, "first") == 1, 120, "the first call to run")
    assert waiting.cancel() and waiting.cancelled()
    assert not running.cancel()
    (tmp_path / "release").touch()
    assert running.result(timeout=120) == "first"
    ex.shutdown()
    assert runs(tmp_path, "second") == 0
    with pytest.raises(concurrent.futures.CancelledError):
        waiting.result()


def test_shutdown_with_cancel_futures_leaves_no_job_and_settles_every_future(
        executor: Any, backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    ex = executor(max_workers=2, name="shut")
    futures = [ex.submit(held, str(tmp_path), str(x)) for x in range(12)]
    wait_until(lambda: sum(runs(tmp_path, x) for x in range(12)) >= 2, 120, "two calls to run")
    ex.shutdown(wait=False, cancel_futures=True)  # before the release: the held calls cannot drain the rest first
    (tmp_path / "release").touch()
    ex.shutdown(wait=True)  # a second shutdown waits, as concurrent.futures allows
    assert all(f.done() for f in futures)
    finished = [f for f in futures if not f.cancelled()]
    assert finished and all(f.result() == str(futures.index(f)) for f in finished)
    assert any(f.cancelled() for f in futures)
    assert sum(runs(tmp_path, x) for x in range(12)) == len(finished)
    no_job_left(backend, store, "shut")
    assert not Store(store, readonly=True).live_workers(ex.sweep_id)


def test_idle_workers_leave_and_new_calls_bring_new_ones(executor: Any, store: str) -> None:
    ex = executor(max_workers=1, idle_timeout=1)
    before = ex.submit(square, 2)
    assert before.result(timeout=120) == 4
    database = Store(store, readonly=True)
    wait_until(lambda: not database.live_workers(ex.sweep_id), 60, "the idle worker to leave")
    after = ex.submit(square, 3)
    assert after.result(timeout=120) == 9
    first, second = (database.attempts(ex.sweep_id, f.index)[0].worker for f in (before, after))
    assert first != second  # a new worker came for the new call


def test_a_named_executor_returns_what_it_ran_before_without_running_it(executor: Any,
                                                                       tmp_path: pathlib.Path) -> None:
    first = executor(max_workers=2, name="remembers")
    assert [f.result(timeout=120) for f in [first.submit(counted, str(tmp_path), x) for x in range(4)]] == \
        [0, 10, 20, 30]
    first.shutdown()
    again = executor(max_workers=2, name="remembers")
    futures = [again.submit(counted, str(tmp_path), x) for x in range(6)]
    assert [f.result(timeout=120) for f in futures] == [0, 10, 20, 30, 40, 50]
    assert [runs(tmp_path, x) for x in range(6)] == [1] * 6  # the first four did not run again
    assert again.sweep_id == first.sweep_id


def test_bad_options_are_refused_before_anything_starts(store: str) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        Executor(backend="local", store=store, memroy="4G")
    with pytest.raises(sheepdog_drmaa.ConfigurationError, match="detach=True"):
        Executor(backend="local", store=store, detach=True)
    assert not os.path.exists(store)
