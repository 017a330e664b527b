"""A sweep of a million small tasks: creation time, tasks/s, the client's peak RSS, the store's size.

    python benchmarks/scale.py [N] [--create-only]

Runs through the local backend with a trivial f (or, with --create-only, stores the sweep and
stops), so it measures the client, the store and the task channel rather than the scheduler.
"""
import os
import resource
import sys
import tempfile
import time

import sheepdog_drmaa


def main() -> None:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), 1_000_000))
    create_only = "--create-only" in sys.argv
    with tempfile.TemporaryDirectory() as scratch:
        store = os.path.join(scratch, "sweeps.sqlite")
        started = time.perf_counter()
        sweep = sheepdog_drmaa.map_async(abs, ((-i,) for i in range(n)), backend="local", store=store,
                                         progress=False, name="scale")
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
    print(f"  creation (pickle, store, start)  {created:8.2f} s")
    if not create_only:
        print(f"  whole sweep                      {total:8.2f} s   ({n / total:,.0f} tasks/s)")
    print(f"  client peak RSS                  {peak_mb:8.1f} MB")
    print(f"  store size                       {size_mb:8.1f} MB")


if __name__ == "__main__":
    main()
