"""map() end to end, through the local backend and on the real Grid Engine."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from helpers import BackendName, Cluster

import sheepdog_drmaa
from sheepdog_drmaa import SweepFailed, TaskFailure


def add(a: int, b: int) -> int:
    return a + b


def norm(values: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(values)))


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError(f"no twos please, got {x}")
    return x * 10


@pytest.fixture
def run(backend: BackendName, store: str) -> Callable[..., list[Any]]:
    def run_map(f: Callable[..., Any], args: Iterable[Any], **options: Any) -> list[Any]:
        results: list[Any] = sheepdog_drmaa.map(f, args, backend=backend, store=store, progress=False, **options)
        return results
    return run_map


def test_the_readme_example(run: Callable[..., list[Any]]) -> None:
    assert run(add, [(1, 1), (1, 2), (2, 2)]) == [2, 3, 4]


def test_a_lambda_and_single_arguments(run: Callable[..., list[Any]]) -> None:
    assert run(lambda x: x ** 2, [3, 4, 5]) == [9, 16, 25]


def test_lists_are_not_unpacked(run: Callable[..., list[Any]]) -> None:
    assert run(len, [[1, 2, 3], [4]]) == [3, 1]


def test_a_closure(run: Callable[..., list[Any]]) -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset
    assert run(shifted, [1, 2]) == [101, 102]


def test_a_function_using_numpy_imported_at_module_level(run: Callable[..., list[Any]]) -> None:
    assert run(norm, [([3, 4],), ([6, 8],)]) == [5.0, 10.0]


def test_namespace_supplies_extra_globals(run: Callable[..., list[Any]]) -> None:
    # FACTOR is a global of f's only through namespace=, on the worker: unknown to ruff and mypy here.
    assert run(lambda x: x * FACTOR, [1, 2], namespace={"FACTOR": 7}) == [7, 14]  # type: ignore[name-defined]  # noqa: F821


def test_a_raising_function_reports_the_remote_traceback_after_the_rest_finish(run: Callable[..., list[Any]]) -> None:
    with pytest.raises(SweepFailed) as caught:
        run(fails_on_two, [0, 1, 2, 3])
    error = caught.value
    message = str(error)
    assert "task 2" in message and "no twos please, got 2" in message
    assert "Traceback" in message and "fails_on_two" in message
    assert error.results == [0, 10, None, 30]
    [failure] = error.failures
    assert (failure.index, failure.args, failure.cause, failure.attempts) == (2, 2, "exception", 1)
    assert isinstance(failure.exception, ValueError)


def test_errors_return_puts_the_failure_record_in_place(run: Callable[..., list[Any]]) -> None:
    results = run(fails_on_two, [1, 2], errors="return")
    assert results[0] == 10
    assert isinstance(results[1], TaskFailure) and results[1].cause == "exception"


def test_two_hundred_tasks_come_back_in_input_order(run: Callable[..., list[Any]]) -> None:
    assert run(lambda i: (i, i * i), range(200)) == [(i, i * i) for i in range(200)]


def test_classic_one_task_per_worker(run: Callable[..., list[Any]]) -> None:
    assert run(add, [(i, 1) for i in range(12)], tasks_per_worker=1) == list(range(1, 13))


def test_a_fixed_pool_of_workers(run: Callable[..., list[Any]]) -> None:
    import os
    pids = run(lambda _: os.getpid(), range(30), workers=2)
    assert len(pids) == 30 and len(set(pids)) <= 2


def test_empty_args_returns_an_empty_list_and_submits_nothing(run: Callable[..., list[Any]], store: str) -> None:
    import os
    assert run(add, []) == []
    assert not os.path.exists(store)


def test_map_async_handle(backend: BackendName, store: str) -> None:
    sweep = sheepdog_drmaa.map_async(lambda x: x + 1, range(20), backend=backend, store=store, progress=False)
    seen = dict(sweep.as_completed())
    assert seen == {i: i + 1 for i in range(20)}
    assert sweep.results() == list(range(1, 21))
    assert sweep.status() == {"done": 20, "failed": 0, "running": 0, "queued": 0}
    assert sweep.failures() == []
    assert dict(sweep.as_completed()) == seen  # a second reading comes from the store


def test_arrays_larger_than_the_cluster_allows_are_split(store: str, cluster: Cluster,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sheepdog_drmaa.backends import drmaa as drmaa_backend
    original = drmaa_backend._read_max_array_size
    monkeypatch.setattr(drmaa_backend, "_read_max_array_size", lambda scheduler: 3)
    sweep = sheepdog_drmaa.map_async(lambda x: x, range(8), backend="drmaa", store=store, progress=False,
                                     tasks_per_worker=1)
    assert sweep.results() == list(range(8))
    jobs = {cluster.array_of(attempt.worker) for attempt in sweep.attempts()}
    assert len(jobs) >= 3  # 8 workers in arrays of at most 3
    # The real limit, as the cluster's own configuration says (not this CI cluster's numbers).
    if cluster.name == "gridengine":
        shown = subprocess.run(["qconf", "-sconf"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^max_aj_tasks\s+(\d+)", shown, re.M)
        assert found is not None
        largest = int(found.group(1))
    else:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", shown, re.M)
        assert found is not None
        largest = int(found.group(1)) - 1  # indices run below it
    assert original(drmaa_backend._shared.scheduler) == largest


def test_the_progress_display_shows_every_count(capsys: pytest.CaptureFixture[str]) -> None:
    from sheepdog_drmaa.progress import Progress
    progress = Progress(10, True, "demo")
    progress.update({"done": 4, "failed": 1, "running": 2, "queued": 3})
    progress.close()
    shown = capsys.readouterr().err
    assert "5/10" in shown
    for words in ("done=4", "failed=1", "running=2", "queued=3"):
        assert words in shown


def test_log_lines_go_above_the_progress_bar_not_across_it(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from sheepdog_drmaa.progress import Progress
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        progress = Progress(10, True, "demo")
        progress.update({"done": 4, "failed": 0, "running": 2, "queued": 4})
        logging.getLogger("sheepdog_drmaa.runner").warning("a line from the library")
        progress.close()
        shown = capsys.readouterr().err
        before = shown[:shown.index("a line from the library")]
        assert before.endswith("\r")  # the bar was cleared first, and is drawn again after the line
        assert logging.getLogger().handlers[-1] is handler  # the user's handler is back once the bar is gone
    finally:
        logging.getLogger().removeHandler(handler)


def allocate_and_spin(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    return len(block)


def test_each_attempt_keeps_its_resource_usage(backend: BackendName, store: str) -> None:
    sweep = sheepdog_drmaa.map_async(allocate_and_spin, [64], backend=backend, store=store, progress=False)
    assert sweep.results() == [64 * 1024 * 1024]
    [attempt] = sweep.attempts(0)
    usage = attempt.detail["resource_usage"]
    assert usage["max_rss_kb"] >= 64 * 1024
    assert usage["cpu_seconds"] >= 0.2
    assert usage["seconds"] >= usage["cpu_seconds"] * 0.9
    assert attempt.host


def report_start_and_wait(directory: str, x: int) -> int:
    open(os.path.join(directory, f"{x}.started"), "w").close()
    deadline = time.monotonic() + 60
    while len([name for name in os.listdir(directory) if name.endswith(".started")]) < 4:
        assert time.monotonic() < deadline, "the four tasks never ran at the same time"
        time.sleep(0.02)
    return x


def test_workers_n_on_the_local_backend_runs_n_at_once(store: str, tmp_path: pathlib.Path) -> None:
    # Each task waits until all four have started: it can only finish if four workers run at once
    # (on a 2-core machine, more than one per core).
    results = sheepdog_drmaa.map(report_start_and_wait, [(str(tmp_path), x) for x in range(4)], backend="local",
                                 store=store, progress=False, workers=4)
    assert results == [0, 1, 2, 3]
