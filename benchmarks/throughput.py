"""Trivial tasks on the cluster: sheepdog_drmaa.map against the raw Grid Engine array job, same run.

    python benchmarks/throughput.py [N] [REPEATS]

Prints wall-clock seconds (median of REPEATS) for the raw array job of N `python -c pass`
(`qsub -sync y -t 1-N -b y`), for map() in its default mode, and for map(tasks_per_worker=1),
with the ratios to the raw array job. Ratios, not seconds, carry from one machine to another.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sheepdog_drmaa


def identity(x):
    return x


def raw_array_job(n: int, log_dir: str) -> float:
    started = time.perf_counter()
    subprocess.run(["qsub", "-sync", "y", "-t", f"1-{n}", "-b", "y", "-o", log_dir, "-e", log_dir, "-N", "raw",
                    sys.executable, "-c", "pass"], check=True, capture_output=True)
    return time.perf_counter() - started


def sweep(n: int, store: str, **options) -> float:
    started = time.perf_counter()
    results = sheepdog_drmaa.map(identity, range(n), backend="drmaa", store=store, progress=False, **options)
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as scratch:
        store = os.path.join(scratch, "sweeps.sqlite")
        timings = {"raw array job": [], "map (default)": [], "map (tasks_per_worker=1)": []}
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits every variant alike
            timings["raw array job"].append(raw_array_job(n, scratch))
            timings["map (default)"].append(sweep(n, store))
            timings["map (tasks_per_worker=1)"].append(sweep(n, store, tasks_per_worker=1))
    raw = statistics.median(timings["raw array job"])
    print(f"N={n} trivial tasks, median of {repeats} runs each")
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"  {label:26s} {median:7.2f} s   {median / raw:5.2f}x raw   (runs: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")


if __name__ == "__main__":
    main()
