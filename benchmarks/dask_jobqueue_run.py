"""The dask-jobqueue side of benchmarks/throughput.py, run by the Python of its own virtual environment.

    python dask_jobqueue_run.py N WORKERS LOG_DIR [map|submit]

Starts an SGECluster of WORKERS single-core workers on the one-node Grid Engine, runs a trivial
function on N integers, gathers the results, and prints the seconds this took end to end
(cluster start-up and shutdown included, as for sheepdog_drmaa.map). ``map`` (the default):
one client.map, as map() does; ``submit``: client.submit once per integer, as a loop over
Executor.submit does (for benchmarks/executor.py).
"""
import sys
import time

from dask.distributed import Client
from dask_jobqueue import SGECluster


def identity(x: int) -> int:
    return x


def main() -> None:
    n, workers, log_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else "map"
    if mode not in ("map", "submit"):
        sys.exit(f"unknown mode {mode!r}: map or submit")
    started = time.perf_counter()
    with SGECluster(cores=1, processes=1, memory="1GB", queue="all.q", log_directory=log_dir,
                    python=sys.executable) as cluster, Client(cluster) as client:
        cluster.scale(workers)
        if mode == "map":
            futures = client.map(identity, range(n))
        else:
            futures = [client.submit(identity, i) for i in range(n)]
        results = client.gather(futures)
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    print(f"{elapsed:.3f}")


if __name__ == "__main__":
    main()
