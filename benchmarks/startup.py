"""Start-up of a sweep on the DRMAA backend: time to the first submission and end to end, each from a
fresh process, beside the raw array job doing the same work.

    python benchmarks/startup.py [--tasks 24,100] [--repeats R]

For each number of tasks N, interleaved R times (drift on a noisy machine then hits every variant):

- sheepdog_drmaa.map(abs, range(N)) in a fresh Python process, timed from the call: to the first
  submission (when Backend.submit is called and when it returns) and to the results; once with a
  store directory new to the site (nothing of the site remembered: "cold") and once with the same
  directory again (its answers remembered beside the store for a few minutes: "warm");
- the raw array job: N tasks of `python -c pass`, `qsub -sync y -t 1-N` on Grid Engine or
  `sbatch --wait --array=1-N` on Slurm (as DRMAA_LIBRARY_PATH names slurm-drmaa), timed around the
  command.

Prints medians and the ratios of sheepdog_drmaa's times to the raw array job's. The goal for the
first submission is 0.3 s. Needs DRMAA_LIBRARY_PATH (and on Grid Engine SGE_ROOT, SGE_CELL and
GLIBC_TUNABLES) as `ci/gridengine.sh` or `ci/slurm.sh` print them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sheepdog_drmaa

# The fresh process: wraps Backend.submit to see when the first submission leaves, then maps.
CHILD = """
import json, sys, time
started = time.perf_counter()
import sheepdog_drmaa
from sheepdog_drmaa.backends.drmaa import DrmaaBackend
imported = time.perf_counter()
marks = {}
submit = DrmaaBackend.submit
def timed_submit(self, count, spec):
    marks.setdefault("called", time.perf_counter())
    try:
        return submit(self, count, spec)
    finally:
        marks.setdefault("returned", time.perf_counter())
DrmaaBackend.submit = timed_submit
n, store = int(sys.argv[1]), sys.argv[2]
called = time.perf_counter()
results = sheepdog_drmaa.map(abs, range(n), backend="drmaa", store=store, progress=False)
ended = time.perf_counter()
assert results == list(range(n))
print(json.dumps({"import": imported - started, "called": marks["called"] - called,
                  "returned": marks["returned"] - called, "total": ended - called}))
"""


def on_slurm() -> bool:
    return "slurm" in os.environ.get("DRMAA_LIBRARY_PATH", "").lower()


def sheepdog(n: int, store: str) -> dict[str, float]:
    """One map in a fresh process, running the sheepdog_drmaa that this process imports."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", CHILD, str(n), store], capture_output=True, text=True,
                            env=environment, cwd=os.path.dirname(store), check=False)
    if result.returncode != 0:
        raise SystemExit(f"the sweep of {n} tasks failed:\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return figures


def raw_array_job(n: int, log_dir: str) -> float:
    if on_slurm():
        command = ["sbatch", "--wait", f"--array=1-{n}", "--job-name=raw", f"--output={log_dir}/raw-%A_%a.out",
                   f"--wrap={sys.executable} -c pass"]
    else:
        command = ["qsub", "-sync", "y", "-t", f"1-{n}", "-b", "y", "-o", log_dir, "-e", log_dir, "-N", "raw",
                   sys.executable, "-c", "pass"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="24,100", help="comma-separated numbers of tasks")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    sizes = [int(n) for n in options.tasks.split(",")]
    figures: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=os.getcwd(), prefix=".startup-bench-") as scratch:
        for repeat in range(options.repeats):
            for n in sizes:
                store = os.path.join(scratch, f"cold-{n}-{repeat}", "sweeps.sqlite")
                os.makedirs(os.path.dirname(store))
                for label, run in (("cold", sheepdog(n, store)), ("warm", sheepdog(n, store))):
                    for what, seconds in run.items():
                        figures.setdefault((n, f"{label} {what}"), []).append(seconds)
                figures.setdefault((n, "raw"), []).append(raw_array_job(n, scratch))
    median = {key: statistics.median(values) for key, values in figures.items()}
    print(f"{'Slurm' if on_slurm() else 'Grid Engine'} through DRMAA, sheepdog_drmaa from "
          f"{os.path.dirname(sheepdog_drmaa.__file__)}; each sweep in a fresh Python process; medians of "
          f"{options.repeats}; ratios to the raw array job of the same N")
    print(f"  {'tasks':>5}  {'':4}  {'import':>7}  {'1st submit called':>17}  {'returned':>8}  "
          f"{'end to end':>10}  {'raw array':>9}  {'ratio':>6}")
    for n in sizes:
        raw = median[(n, "raw")]
        for label in ("cold", "warm"):
            get = {what: median[(n, f"{label} {what}")] for what in ("import", "called", "returned", "total")}
            print(f"  {n:>5}  {label:4}  {get['import']:6.2f}s  {get['called']:16.3f}s  {get['returned']:7.3f}s  "
                  f"{get['total']:9.2f}s  {raw:8.2f}s  {get['total'] / raw:5.2f}x")
    print("  (first submission: seconds from the call of map to Backend.submit being called and returning; "
          "goal 0.3 s)")


if __name__ == "__main__":
    main()
