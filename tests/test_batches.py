"""Batched leases on every backend: short tasks travel many to a lease, and a worker that dies
holding a batch is charged only for the task it was running; the rest go back uncounted."""
from __future__ import annotations

import os
import pathlib
import signal
import time

from helpers import BackendName

import sheepdog_drmaa


def kill_worker_at(directory: str, x: int, victim: int) -> int:
    """Task ``victim`` kills its own worker process the first time it runs (a real SIGKILL)."""
    if x == victim:
        marker = os.path.join(directory, "killed")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_a_worker_killed_mid_batch_charges_only_the_task_it_ran(backend: BackendName, store: str,
                                                                tmp_path: pathlib.Path) -> None:
    n, victim = 300, 150
    handle = sheepdog_drmaa.map_async(kill_worker_at, [(str(tmp_path), x, victim) for x in range(n)],
                                      backend=backend, store=store, progress=False, workers=1, retries=1)
    assert handle.results() == list(range(n))
    causes = {x: [a.cause for a in handle.attempts(x)] for x in range(n)}
    assert causes[victim] == ["signal", "result"]
    killed = handle.attempts(victim)[0]
    assert "SIGKILL" in killed.detail["summary"] and killed.detail["peak_rss_kb"] > 0  # named by the worker's parent
    returned = [x for x in range(n) if causes[x] == ["returned", "result"]]
    assert returned, "the victim's batch held other tasks: they should have gone back"
    assert all("not counted" in handle.attempts(x)[0].detail["summary"] for x in returned)
    assert all(causes[x] == ["result"] for x in range(n) if x != victim and x not in returned)
    workers_used = {a.worker for x in range(n) for a in handle.attempts(x)}
    assert len(workers_used) == 2  # the killed worker and its replacement: many tasks to each lease


def hang_at(x: int, victim: int) -> int:
    if x == victim:
        time.sleep(120)
    return x


def test_a_task_that_hangs_mid_batch_is_the_one_timed_out(backend: BackendName, store: str) -> None:
    """The worker names a later task of its batch once it has run a second, so the timeout is
    judged on that task's own start and charged to it alone."""
    n, victim = 300, 150
    handle = sheepdog_drmaa.map_async(hang_at, [(x, victim) for x in range(n)], backend=backend, store=store,
                                      progress=False, workers=1, timeout=5, retries=0, errors="return")
    results = handle.results()
    assert results[victim].cause == "timeout" and "timeout of 5 s" in results[victim].summary
    assert [r for i, r in enumerate(results) if i != victim] == [x for x in range(n) if x != victim]
    causes = {x: [a.cause for a in handle.attempts(x)] for x in range(n)}
    returned = [x for x in range(n) if causes[x] == ["returned", "result"]]
    assert returned and all(x > victim for x in returned)  # those after it in its batch, run again
    assert all(causes[x] == ["result"] for x in range(n) if x != victim and x not in returned)
