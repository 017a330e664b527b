"""What it costs the client to learn that workers ended, per poll, with 10, 100 and 1,000 workers.

For each scheduler (one child process each: drmaa-python loads one libdrmaa per process) it
submits arrays of ``sleep`` jobs through the backend's DRMAA session, times one poll of the
strategy the backend uses on that scheduler while none has ended, and, for comparison, one
``wait(ANY)`` and one ``jobStatus`` per worker; then removes the jobs. Takes a few minutes.

    python benchmarks/poll_cost.py                   # both schedulers, 10/100/1000 workers
    python benchmarks/poll_cost.py --sizes 10 100    # fewer

Needs both clusters up (ci/gridengine.sh, ci/slurm.sh) and no other jobs of yours running. Not run in CI.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = {
    "gridengine": {"DRMAA_LIBRARY_PATH": "/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0",
                   "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=4096"},
    "slurm": {"DRMAA_LIBRARY_PATH": os.environ.get("SLURM_DRMAA_LIBRARY_PATH", "/opt/slurm-drmaa/lib/libdrmaa.so")},
}
REPEATS = 5


def seconds(call: Callable[[], object]) -> float:
    """Median wall time of ``call`` over a few runs."""
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(size: int) -> None:
    """In the child: submit ``size`` sleeping workers, time the polls, remove the workers."""
    sys.path.insert(0, ROOT)
    from sheepdog_drmaa.backends.drmaa import DrmaaBackend

    backend = DrmaaBackend()
    drmaa, session = backend.drmaa, backend.session
    template = session.createJobTemplate()
    template.remoteCommand, template.args = "/bin/sleep", ["600"]
    template.workingDirectory, template.outputPath, template.errorPath = "/tmp", ":/dev/null", ":/dev/null"
    ids: list[str] = []
    while len(ids) < size:
        ids.extend(session.runBulkJobs(template, 1, min(size - len(ids), backend.max_array_size), 1))
    session.deleteJobTemplate(template)
    backend._exits.unreaped.add(ids)

    def wait_any() -> None:
        try:
            session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, drmaa.Session.TIMEOUT_NO_WAIT)
        except drmaa.errors.ExitTimeoutException:
            pass

    exits = backend._exits

    def one_listing() -> None:
        """One listing of the arrays, started in the background and read once it has ended."""
        exits._next_listing = 0.0
        exits._listing_turn(time.monotonic())
        if not exits._lister.busy:
            raise SystemExit("the listing command did not start (is squeue on the PATH?)")
        while not exits._listing_turn(time.monotonic()):
            time.sleep(0.001)

    strategy = exits._wait_once if backend.scheduler.cheap_wait_any else one_listing
    try:
        figures = {"scheduler": backend.scheduler.name, "workers": size,
                   "strategy": seconds(strategy), "wait_any": seconds(wait_any),
                   "job_status_each": seconds(lambda: [session.jobStatus(worker_id) for worker_id in ids])}
    finally:
        backend.terminate(ids)
        backend.close()
    print(json.dumps(figures))


def no_jobs_left(scheduler: str) -> None:
    command = ["qstat", "-u", "*"] if scheduler == "gridengine" else ["squeue", "--noheader"]
    deadline = time.monotonic() + 120
    while subprocess.run(command, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise SystemExit(f"{scheduler} still has jobs 120 s after the benchmark removed its own")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--schedulers", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        return measure(arguments.child)
    print(f"{'scheduler':<11} {'workers':>7} {'our poll':>10} {'wait(ANY)':>10} {'jobStatus each':>15}")
    for scheduler in arguments.schedulers:
        for size in arguments.sizes:
            no_jobs_left(scheduler)
            child = subprocess.run([sys.executable, __file__, "--child", str(size)], capture_output=True, text=True,
                                   env={**os.environ, **LIBRARIES[scheduler]}, check=True)
            row = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{row['scheduler']:<11} {size:>7} {row['strategy'] * 1000:>8.1f} ms "
                  f"{row['wait_any'] * 1000:>7.1f} ms {row['job_status_each'] * 1000:>12.1f} ms", flush=True)
    print("our poll: one poll of the backend's strategy while no worker has ended (Grid Engine: one wait(ANY); "
          "Slurm: one squeue of the sweep's arrays)")


if __name__ == "__main__":
    main()
