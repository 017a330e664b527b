"""A whole array deleted from outside (qdel JOB, scancel JOB): each running task's attempt is recorded
as aborted, never as a clean exit, and retried by a new worker."""
from __future__ import annotations

import os
import pathlib
import time

from helpers import Cluster, wait_until

import sheepdog_drmaa


def announce_and_sleep_first_time(directory: str, x: int) -> int:
    path = os.path.join(directory, f"{x}.runs")
    first = not os.path.exists(path)
    with open(path, "a") as handle:
        handle.write("run\n")
    if first:
        from sheepdog_drmaa.worker_ids import worker_id_from_environment
        with open(os.path.join(directory, f"{x}.worker"), "w") as handle:
            handle.write(worker_id_from_environment())
        time.sleep(120)
    return x


def test_a_whole_array_deleted_from_outside_is_recorded_aborted_and_retried(store: str, tmp_path: pathlib.Path,
                                                                            cluster: Cluster) -> None:
    handle = sheepdog_drmaa.map_async(announce_and_sleep_first_time, [(str(tmp_path), x) for x in range(2)],
                                      backend="drmaa", store=store, progress=False, workers=2)
    files = [tmp_path / f"{x}.worker" for x in range(2)]
    wait_until(lambda: all(f.exists() and f.read_text() for f in files), 60, "both tasks to start")
    cluster.delete_array(files[0].read_text())
    assert handle.wait(120)
    assert handle.results() == [0, 1]
    for x in range(2):
        first = handle.attempts(x)[0]
        assert first.cause == "aborted", first
        assert [attempt.cause for attempt in handle.attempts(x)][1:] == ["result"]
