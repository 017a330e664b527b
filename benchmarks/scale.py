"""A sweep of a million small tasks: creation time against its floor, tasks/s, peak RSS, store size.

    python benchmarks/scale.py [N] [--create-only]

Runs through the local backend with a trivial f (or, with --create-only, stores the sweep and
stops), so it measures the client, the store and the task channel rather than the scheduler.

Creation (``map_async`` returning) is set beside its floor, measured first in the same run: pickling
each argument with cloudpickle and inserting one row per task, in one transaction, into a fresh
store of the same schema and settings. The goal is creation within 1.5 times the floor.
"""
import os
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator

import cloudpickle

import sheepdog_drmaa
from sheepdog_drmaa.store import SCHEMA


def arguments(n: int) -> Iterator[tuple[int]]:
    return ((-i,) for i in range(n))


def floor(n: int, scratch: str) -> float:
    """Seconds to pickle every argument and insert the rows in one transaction, the plainest way."""
    db = sqlite3.connect(os.path.join(scratch, "floor.sqlite"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    started = time.perf_counter()
    with db:
        db.executemany("INSERT INTO tasks (sweep_id, idx, args, state) VALUES (?,?,?,'pending')",
                       (("floor", index, cloudpickle.dumps(item, protocol=5))
                        for index, item in enumerate(arguments(n))))
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), 1_000_000))
    create_only = "--create-only" in sys.argv
    with tempfile.TemporaryDirectory() as scratch:
        floor_seconds = floor(n, scratch)
        store = os.path.join(scratch, "sweeps.sqlite")
        started = time.perf_counter()
        sweep = sheepdog_drmaa.map_async(abs, arguments(n), backend="local", store=store, progress=False,
                                         name="scale")
        created = time.perf_counter() - started
        if create_only:
            sweep.cancel()
        else:
            results = sweep.results()
            assert results == list(range(n))
        total = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = sum(os.path.getsize(os.path.join(scratch, f)) for f in os.listdir(scratch)
                      if f.startswith("sweeps.sqlite")) / 1e6
    print(f"N={n} tasks through the local backend ({'creation only' if create_only else 'run to the end'})")
    print(f"  floor (cloudpickle + 1 transaction) {floor_seconds:8.2f} s")
    print(f"  creation (pickle, store, start)     {created:8.2f} s   ({created / floor_seconds:.2f}x the floor; "
          "goal <= 1.5x)")
    if not create_only:
        print(f"  whole sweep                         {total:8.2f} s   ({n / total:,.0f} tasks/s)")
    print(f"  client peak RSS                     {peak_mb:8.1f} MB")
    print(f"  store size                          {size_mb:8.1f} MB")


if __name__ == "__main__":
    main()
