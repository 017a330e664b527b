"""What a loop over Executor.submit costs against one sheepdog_drmaa.map of the same calls, and
against dask-jobqueue's client.submit, all in the same run on the same machine.

    python benchmarks/executor.py [--backend local|drmaa] [--calls N] [--repeats R] [--no-dask]

Prints, each a median of R runs interleaved so that drift on a noisy machine hits every variant
(after one empty Executor, so that what a process pays once weighs on neither side), with 8
workers and a fresh store in a temporary directory for every run:

- Executor: N trivial calls through Executor(max_workers=8).submit in a loop, then every
  result, end to end (the Executor's creation and shutdown(wait=True) included);
- map: the same N calls through sheepdog_drmaa.map(workers=8), end to end, and the ratio of the
  two (goal: the Executor within 1.5 times map);
- the time inside each submit call, median and 90th percentile (goal: a median of 50 us at most);
- with --backend drmaa, unless --no-dask: the same N calls through dask-jobqueue's SGECluster
  with 8 single-core workers, client.submit in a loop then client.gather, end to end (installed
  into a virtual environment of its own by benchmarks/throughput.py on first use).

Ratios, not seconds, carry from one machine to another.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from throughput import WORKERS, dask_jobqueue, line

import sheepdog_drmaa
from sheepdog_drmaa.executor import Executor

RATIO_GOAL = 1.5
SUBMIT_GOAL_US = 50.0


def identity(x: int) -> int:
    return x


def through_executor(n: int, backend: str, scratch: str) -> tuple[float, list[int]]:
    """Seconds end to end, and the nanoseconds inside each submit call."""
    inside = [0] * n
    clock = time.perf_counter_ns
    started = time.perf_counter()
    executor = Executor(max_workers=WORKERS, backend=backend, store=os.path.join(scratch, "sweeps.sqlite"),
                        progress=False)
    futures = []
    for i in range(n):
        before = clock()
        futures.append(executor.submit(identity, i))
        inside[i] = clock() - before
    results = [future.result() for future in futures]
    executor.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    return elapsed, inside


def through_map(n: int, backend: str, scratch: str) -> float:
    """Seconds end to end of one map over the same calls."""
    started = time.perf_counter()
    results = sheepdog_drmaa.map(identity, range(n), workers=WORKERS, backend=backend,
                                 store=os.path.join(scratch, "sweeps.sqlite"), progress=False)
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    return elapsed


def warm_up(backend: str) -> None:
    """Open an Executor and shut it down, with no call: what the first sweep of a process pays once
    (imports, the scheduler's library, the site's settings) then weighs on neither side."""
    with tempfile.TemporaryDirectory() as scratch:
        Executor(max_workers=WORKERS, backend=backend, store=os.path.join(scratch, "sweeps.sqlite"),
                 progress=False).shutdown(wait=True)


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("local", "drmaa"), default="drmaa")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true", help="skip dask-jobqueue")
    options = parser.parse_args()
    dask = options.backend == "drmaa" and not options.no_dask
    runs: dict[str, list[float]] = {}
    warm_up(options.backend)
    for repeat in range(options.repeats):
        if repeat % 2:  # map first every other time, so that neither always follows the other
            with tempfile.TemporaryDirectory() as scratch:
                runs.setdefault("map", []).append(through_map(options.calls, options.backend, scratch))
        with tempfile.TemporaryDirectory() as scratch:
            elapsed, inside = through_executor(options.calls, options.backend, scratch)
        runs.setdefault("executor", []).append(elapsed)
        runs.setdefault("submit median", []).append(statistics.median(inside) / 1000)
        runs.setdefault("submit p90", []).append(percentile(inside, 0.9) / 1000)
        if not repeat % 2:
            with tempfile.TemporaryDirectory() as scratch:
                runs.setdefault("map", []).append(through_map(options.calls, options.backend, scratch))
        if dask:
            with tempfile.TemporaryDirectory() as scratch:
                runs.setdefault("dask", []).append(dask_jobqueue(options.calls, scratch, "submit"))
    executor, mapped = statistics.median(runs["executor"]), statistics.median(runs["map"])
    submit = statistics.median(runs["submit median"])
    print(f"median of {options.repeats} runs each, on this machine, in this run")
    print(f"{options.calls:,} trivial calls, {WORKERS} workers, backend {options.backend}")
    print(line("Executor.submit loop, end to end", runs["executor"], "s "))
    print(line("map, end to end", runs["map"], "s "))
    print(f"  Executor takes {executor / mapped:.2f}x map's time "
          f"({'meets' if executor / mapped <= RATIO_GOAL else 'misses'} the goal of {RATIO_GOAL:g}x)")
    print(line("inside submit, median", runs["submit median"], "us"))
    print(line("inside submit, 90th percentile", runs["submit p90"], "us"))
    print(f"  median submit {'meets' if submit <= SUBMIT_GOAL_US else 'misses'} the goal of {SUBMIT_GOAL_US:g} us")
    if dask:
        print(line("dask-jobqueue client.submit loop", runs["dask"], "s "))
        print(f"  Executor takes {executor / statistics.median(runs['dask']):.2f}x dask-jobqueue's time end to end")


if __name__ == "__main__":
    main()
