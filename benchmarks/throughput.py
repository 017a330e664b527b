"""Tasks per second on the one-node Grid Engine: sheepdog_drmaa.map against the raw array job and
against dask-jobqueue, all in the same run on the same machine.

    python benchmarks/throughput.py [--latency N] [--repeats R] [--steady N] [--short N] [--no-dask]

Prints, each a median of R runs interleaved so that drift on a noisy machine hits every variant:

- latency: N trivial tasks (`python -c pass` for the raw array job `qsub -sync y -t 1-N`), map()
  in its default mode and map(tasks_per_worker=1), with ratios to the raw array job;
- steady throughput: N trivial tasks with workers=8, end to end, and tasks/s from the first lease
  to the last result (read from the store);
- dask-jobqueue: the same N trivial tasks through SGECluster with 8 single-core workers,
  client.map then gather, end to end (installed into a virtual environment of its own,
  /var/tmp/sheepdog-bench-dask, on first use);
- short tasks: N tasks of 10 ms with workers=8, tasks/s against the 800/s that 8 workers could
  do with no overhead at all, from the first lease to the last result (the scheduler starts the
  8 workers up to a scheduling interval apart) and while all 8 ran.

Ratios, not seconds, carry from one machine to another.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import sheepdog_drmaa

DASK_VENV = "/var/tmp/sheepdog-bench-dask"
WORKERS = 8
SHORT_TASK_SECONDS = 0.01


def identity(x: int) -> int:
    return x


def ten_milliseconds(x: int) -> int:
    time.sleep(SHORT_TASK_SECONDS)
    return x


def raw_array_job(n: int, log_dir: str) -> float:
    started = time.perf_counter()
    subprocess.run(["qsub", "-sync", "y", "-t", f"1-{n}", "-b", "y", "-o", log_dir, "-e", log_dir, "-N", "raw",
                    sys.executable, "-c", "pass"], check=True, capture_output=True)
    return time.perf_counter() - started


def sweep(f: Callable[..., Any], n: int, store: str, **options: Any) -> tuple[float, float, float]:
    """(seconds end to end, tasks/s from the first lease to the last result, tasks/s while every
    worker was running: from the last worker's first lease to the first worker's last result)."""
    started = time.perf_counter()
    handle = sheepdog_drmaa.map_async(f, range(n), backend="drmaa", store=store, progress=False, **options)
    results = handle.results()
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    with sqlite3.connect(store) as db:
        first, last = db.execute("SELECT MIN(started), MAX(ended) FROM attempts WHERE sweep_id = ?",
                                 (handle.id,)).fetchone()
        all_in, first_out = db.execute(
            "SELECT MAX(first), MIN(last) FROM (SELECT MIN(started) AS first, MAX(ended) AS last FROM attempts "
            "WHERE sweep_id = ? GROUP BY worker)", (handle.id,)).fetchone()
        together = db.execute("SELECT COUNT(*) FROM attempts WHERE sweep_id = ? AND cause = 'result' AND ended > ? "
                              "AND ended <= ?", (handle.id, all_in, first_out)).fetchone()[0]
    return elapsed, n / (last - first), together / (first_out - all_in) if first_out > all_in else float("nan")


def dask_jobqueue(n: int, scratch: str, mode: str = "map") -> float:
    """End-to-end seconds of the same trivial tasks through dask-jobqueue's SGECluster: one
    client.map (``map``), or client.submit once per task (``submit``)."""
    python = os.path.join(DASK_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", DASK_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "dask-jobqueue", "distributed"], check=True)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dask_jobqueue_run.py")
    done = subprocess.run([python, script, str(n), str(WORKERS), scratch, mode], check=True, capture_output=True,
                          text=True, cwd=scratch)
    return float(done.stdout.split()[-1])


def line(label: str, values: list[float], unit: str, against: float | None = None, name: str = "") -> str:
    median = statistics.median(values)
    ratio = f"   {median / against:5.2f}x {name}" if against else ""
    return f"  {label:34s} {median:9.2f} {unit}{ratio}   (runs: " + ", ".join(f"{v:.2f}" for v in values) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=int, default=100, help="tasks in the latency runs (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steady", type=int, default=20_000, help="trivial tasks in the throughput runs (0: skip)")
    parser.add_argument("--short", type=int, default=4_000, help="10 ms tasks in the short-task runs (0: skip)")
    parser.add_argument("--no-dask", action="store_true", help="skip dask-jobqueue")
    options = parser.parse_args()
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = os.path.join(scratch, "sweeps.sqlite")
        for _ in range(options.repeats):
            if options.latency:
                runs.setdefault("raw", []).append(raw_array_job(options.latency, scratch))
                runs.setdefault("default", []).append(sweep(identity, options.latency, store)[0])
                runs.setdefault("one", []).append(sweep(identity, options.latency, store, tasks_per_worker=1)[0])
            if options.steady:
                elapsed, rate, _ = sweep(identity, options.steady, store, workers=WORKERS)
                runs.setdefault("steady", []).append(elapsed)
                runs.setdefault("steady rate", []).append(rate)
                if not options.no_dask:
                    runs.setdefault("dask", []).append(dask_jobqueue(options.steady, scratch))
            if options.short:
                _, rate, together = sweep(ten_milliseconds, options.short, store, workers=WORKERS)
                runs.setdefault("short rate", []).append(rate)
                runs.setdefault("short together", []).append(together)
    print(f"median of {options.repeats} runs each, on this machine, in this run")
    if "raw" in runs:
        raw = statistics.median(runs["raw"])
        print(f"latency: {options.latency} trivial tasks")
        print(line("raw array job", runs["raw"], "s "))
        print(line("map (default)", runs["default"], "s ", raw, "raw"))
        print(line("map (tasks_per_worker=1)", runs["one"], "s ", raw, "raw"))
    if "steady" in runs:
        print(f"throughput: {options.steady:,} trivial tasks, {WORKERS} workers")
        print(line("map, end to end", runs["steady"], "s "))
        print(line("map, first lease to last result", runs["steady rate"], "tasks/s"))
        if "dask" in runs:
            print(line("dask-jobqueue SGECluster, end to end", runs["dask"], "s "))
            print(f"  map takes {statistics.median(runs['steady']) / statistics.median(runs['dask']):.2f}x "
                  "dask-jobqueue's time end to end")
    if "short rate" in runs:
        ideal = WORKERS / SHORT_TASK_SECONDS
        print(f"short tasks: {options.short:,} tasks of {SHORT_TASK_SECONDS * 1000:g} ms, {WORKERS} workers")
        print(line("map, first lease to last result", runs["short rate"], "tasks/s", ideal, f"of {ideal:g}/s"))
        print(line(f"map, while all {WORKERS} workers ran", runs["short together"], "tasks/s", ideal,
                   f"of {ideal:g}/s"))


if __name__ == "__main__":
    main()
