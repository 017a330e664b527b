"""What one turn of the runner's loop costs in the pure sweep state at scale: 1,000 workers
holding batches of a 1,000,000-task sweep.

    python benchmarks/loop_cost.py [TASKS] [WORKERS]

Prints the microseconds of each call the loop makes every turn (and of a lease and a finish),
so that anything that grows with the number of tasks, or with the square of the workers, shows.
"""
import sys
import time
from collections.abc import Callable

from sheepdog_drmaa.model import Attempt, AttemptDetail, Cause
from sheepdog_drmaa.state import SweepState

QUICK = AttemptDetail(resource_usage={"seconds": 0.0001})  # the report of a task that took 0.1 ms


def per_call(call: Callable[[], object], repeats: int = 200) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats * 1e6


def finish(state: SweepState, worker: str, attempt: Attempt, now: float) -> None:
    """Report the attempt done, as the runner does: its ending decided, then applied."""
    closing = state.report(worker, attempt.task, attempt.number, Cause.RESULT, now, QUICK)
    assert closing is not None
    state.apply([closing])


def main() -> None:
    n_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n_workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    started = time.perf_counter()
    state = SweepState(n_tasks, max_workers=n_workers)
    created = time.perf_counter() - started
    workers = [f"w{i}" for i in range(n_workers)]
    state.add_workers(workers)
    for worker in workers:
        state.hello(worker, now=0.0)
    for round_ in range(8):  # batches grow while tasks prove short
        for worker in workers:
            for attempt in state.lease(worker, now=float(round_)):
                finish(state, worker, attempt, float(round_))
    for worker in workers:
        state.lease(worker, now=10.0)  # every worker holds a batch
    held = sum(len(w.held) for w in state.workers)
    print(f"{n_tasks:,} tasks, {n_workers:,} workers holding {held:,} tasks; state built in {created:.2f} s")
    print(f"  workers_to_submit  {per_call(state.workers_to_submit):9.1f} us")
    print(f"  surplus_workers    {per_call(state.surplus_workers):9.1f} us")
    print(f"  overdue            {per_call(lambda: state.overdue(11.0)):9.1f} us")
    print(f"  counts             {per_call(state.counts):9.1f} us")
    print(f"  unresponsive       {per_call(lambda: state.unresponsive({}, 11.0)):9.1f} us")
    worker = workers[0]

    def lease_and_finish() -> None:
        for attempt in list(state.workers.all[worker].held.values()):
            finish(state, worker, attempt, 12.0)
        state.lease(worker, 12.0)
    print(f"  a batch finished and leased again ({state.workers.all[worker].last_batch} tasks) "
          f"{per_call(lease_and_finish, 50):9.1f} us")


if __name__ == "__main__":
    main()
