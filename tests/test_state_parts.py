"""The parts of the pure core on their own: worker phases, tasks added to a live sweep, one order of endings."""
from __future__ import annotations

import pytest

from sheepdog_drmaa.errors import StoreError
from sheepdog_drmaa.ledger import Ledger
from sheepdog_drmaa.model import AttemptDetail, AttemptEnd, Cause, ExitInfo, TaskState
from sheepdog_drmaa.state import IllegalTransition, SweepState, WorkerPhase
from sheepdog_drmaa.state.workers import TRANSITIONS, Workers


def test_every_phase_move_outside_the_table_raises_and_the_indexes_follow_the_moves() -> None:
    for source, allowed in TRANSITIONS.items():
        for target in WorkerPhase:
            workers = Workers()
            workers.add(["w"])
            worker = workers.all["w"]
            path = {WorkerPhase.SUBMITTED: [], WorkerPhase.GREETED: [WorkerPhase.GREETED],
                    WorkerPhase.WORKING: [WorkerPhase.GREETED, WorkerPhase.WORKING],
                    WorkerPhase.RETIRING: [WorkerPhase.GREETED, WorkerPhase.RETIRING],
                    WorkerPhase.TERMINATED: [WorkerPhase.TERMINATED]}[source]
            for step in path:
                workers.move(worker, step)
            assert worker.phase is source
            if target in allowed:
                workers.move(worker, target)
                assert list(workers.in_phase(target)) == ["w"]
                assert all(not workers.in_phase(p) for p in WorkerPhase if p is not target)
            else:
                with pytest.raises(IllegalTransition, match=f"from {source.value} to {target.value}"):
                    workers.move(worker, target)
                assert list(workers.in_phase(source)) == ["w"]


def test_a_terminated_worker_is_never_leased_nor_greeted_again() -> None:
    state = SweepState(3)
    state.add_workers(["w"])
    state.hello("w", now=0)
    assert state.workers.terminate(state.workers.all["w"]) and not state.workers.terminate(state.workers.all["w"])
    assert state.lease("w", 1) == [] and state.hello("w", now=2) is False
    assert state.workers.all["w"].phase is WorkerPhase.TERMINATED


def test_a_second_process_under_a_greeted_workers_id_is_refused_and_the_first_keeps_its_tasks() -> None:
    """A job the scheduler started again (Slurm requeues one whose node failed) says hello from another
    process: it is told to exit; the first process's lease stands, to end as that process does."""
    state = SweepState(2)
    state.add_workers(["w"])
    assert state.hello("w", host="node1", now=0, process_group=100)
    held = state.lease("w", 1)
    assert state.hello("w", host="node1", now=2, process_group=100)  # the same process, its answer lost
    assert state.hello("w", host="node2", now=3, process_group=200) is False
    assert state.hello("w", host="node1", now=3, process_group=300) is False
    worker = state.workers.all["w"]
    assert (worker.host, worker.process_group) == ("node1", 100) and list(worker.held) == [a.task for a in held]


def test_tasks_added_to_a_live_sweep_are_leased_after_those_already_there_and_counted() -> None:
    state = SweepState(2, max_workers=5)
    state.add_workers(["w"])
    state.hello("w", now=0)
    first = state.lease("w", 1)
    assert [a.task for a in first] == [0]
    assert state.add_tasks(3) == range(2, 5)
    assert state.counts() == {"done": 0, "failed": 0, "running": 1, "queued": 4}
    assert state.workers_to_submit() == 4  # one worker for each queued task the busy one will not take
    for attempt in first:
        closing = state.report("w", attempt.task, attempt.number, Cause.RESULT, 2, AttemptDetail())
        assert closing is not None
        state.apply([closing])
    leased = []
    while not state.finished:
        batch = state.lease("w", 3)
        assert batch, "a pending task was not leased"
        leased += [a.task for a in batch]
        reported = [state.report("w", a.task, a.number, Cause.RESULT, 3, AttemptDetail()) for a in batch]
        state.apply([closing for closing in reported if closing is not None])
    assert leased == [1, 2, 3, 4] and state.tasks.n_done == 5


class RefusingStore:
    """A store whose every write fails, as a full disk does."""

    def record_ends(self, sweep_id: str, ends: list[AttemptEnd], worker_ended: str | None = None) -> None:
        raise StoreError("disk full")


def test_an_ending_the_store_refused_is_neither_applied_nor_announced() -> None:
    state = SweepState(1, retries=0)
    state.add_workers(["w"])
    state.hello("w", now=0)
    [attempt] = state.lease("w", 1)
    announced: list[int] = []
    ledger = Ledger(RefusingStore(), "sweep", state, announced.append)  # type: ignore[arg-type]
    closings = state.worker_ended(ExitInfo("w", signaled=True, signal="SIGKILL"), now=2)
    assert [c.outcome for c in closings] == [TaskState.FAILED]
    with pytest.raises(StoreError):
        ledger.commit(closings)
    assert state.tasks.states[attempt.task] is TaskState.RUNNING and attempt.cause is None
    assert state.tasks.n_failed == 0 and announced == []


def test_a_task_an_overdue_worker_held_keeps_the_queued_worker_that_will_take_it() -> None:
    """The overdue workers' endings are applied before the rest of the tick: their tasks count as
    queued again, so a worker still waiting in the scheduler is not removed as surplus."""
    state = SweepState(2, heartbeat_timeout=5)
    state.add_workers(["quiet", "busy"])
    for worker in ("quiet", "busy"):
        state.hello(worker, now=0)
        assert len(state.lease(worker, 0)) == 1
    state.add_workers(["queued"])
    state.heartbeat("busy", None, now=9)
    overdue = state.expire_overdue(now=10)
    assert overdue.workers == ["quiet"] and [c.outcome for c in overdue.closings] == [TaskState.PENDING]
    state.apply(overdue.closings)
    tick = state.tick({}, now=10)
    assert tick.surplus == [] and tick.counts["queued"] == 1
    assert state.workers.all["queued"].phase is WorkerPhase.SUBMITTED
