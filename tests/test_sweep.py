"""The pure sweep state: leases, batches, reports, deaths, retries, surplus and start failures."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sheepdog_drmaa.model import Attempt, AttemptDetail, Cause, Closing, ExitInfo, TaskState
from sheepdog_drmaa.state import SweepState, WorkerPhase
from sheepdog_drmaa.state.batches import MAX_BATCH


def started(n_tasks: int, workers: Sequence[str] = ("w1",), **options: Any) -> SweepState:
    state = SweepState(n_tasks, **options)
    state.add_workers(workers)
    for worker in workers:
        assert state.hello(worker)
    return state


def lease_one(state: SweepState, worker: str, now: float) -> Attempt | None:
    """The single task a lease gives (as it does while nothing is known of task durations), or None."""
    batch = state.lease(worker, now)
    assert len(batch) <= 1
    return batch[0] if batch else None


def finish(state: SweepState, worker: str, task: int, number: int, cause: Cause, now: float,
           detail: AttemptDetail | None = None) -> Attempt | None:
    """A reported ending, stored (here: nowhere) and applied; None if the attempt was superseded."""
    closing = state.report(worker, task, number, cause, now, detail or AttemptDetail())
    if closing is None:
        return None
    state.apply([closing])
    return closing.attempt


def applied(state: SweepState, closings: list[Closing]) -> list[Attempt]:
    """Endings the state decided, applied as the ledger does once they are stored; their attempts."""
    state.apply(closings)
    return [closing.attempt for closing in closings]


def quick(seconds: float = 0.001) -> AttemptDetail:
    """The detail of a report of a task that took ``seconds``."""
    return AttemptDetail(resource_usage={"seconds": seconds})


def test_tasks_are_leased_in_order_and_finish() -> None:
    state = started(2)
    first = lease_one(state, "w1", now=0)
    assert first is not None
    assert (first.task, first.number) == (0, 1)
    assert finish(state, "w1", 0, 1, Cause.RESULT, now=1) is first
    second = lease_one(state, "w1", now=1)
    assert second is not None
    assert second.task == 1
    finish(state, "w1", 1, 1, Cause.RESULT, now=2)
    assert state.finished and state.counts() == {"done": 2, "failed": 0, "running": 0, "queued": 0}
    assert lease_one(state, "w1", now=3) is None


def test_a_killed_worker_fails_its_attempt_and_the_task_is_retried_until_the_budget_is_spent() -> None:
    state = SweepState(1, retries=1)
    for number, worker in enumerate(["w1", "w2"], start=1):
        state.add_workers([worker])
        state.hello(worker)
        attempt = lease_one(state, worker, now=0)
        assert attempt is not None
        assert attempt.number == number
        [ended] = applied(state, state.worker_ended(ExitInfo(worker, signaled=True, signal="SIGKILL"), now=1))
        assert ended.cause is Cause.SIGNAL
    assert state.tasks.states[0] is TaskState.FAILED
    assert [a.cause for a in state.tasks.failed_attempts[0]] == [Cause.SIGNAL, Cause.SIGNAL]
    assert state.finished


def test_exceptions_are_final_unless_listed() -> None:
    state = started(2, retry_exceptions=("builtins.KeyError",))
    lease_one(state, "w1", 0)
    finish(state, "w1", 0, 1, Cause.EXCEPTION, 1, AttemptDetail(exception_types=("builtins.ValueError",)))
    assert state.tasks.states[0] is TaskState.FAILED
    lease_one(state, "w1", 1)
    finish(state, "w1", 1, 1, Cause.EXCEPTION, 2, AttemptDetail(exception_types=("builtins.KeyError",)))
    assert state.tasks.states[1] is TaskState.PENDING
    retried = lease_one(state, "w1", 2)
    assert retried is not None
    assert retried.number == 2


def test_a_late_report_from_a_superseded_attempt_is_dropped() -> None:
    state = started(1, workers=("w1", "w2"), heartbeat_timeout=5)
    lease_one(state, "w1", now=0)
    assert state.overdue(now=10) == [("w1", Cause.LOST)]
    applied(state, state.expire("w1", Cause.LOST, now=10))
    again = lease_one(state, "w2", now=11)
    assert again is not None
    assert again.number == 2
    assert finish(state, "w1", 0, 1, Cause.RESULT, now=12) is None  # the lost one comes back
    assert finish(state, "w2", 0, 2, Cause.RESULT, now=13) is again
    assert state.tasks.n_done == 1 and state.finished


def test_heartbeats_keep_an_attempt_alive_and_timeouts_are_separate() -> None:
    state = started(1, heartbeat_timeout=5, timeout=20)
    lease_one(state, "w1", now=0)
    for now in range(4, 20, 4):
        assert state.heartbeat("w1", (0, 1, float(now)), now=now)
        assert state.overdue(now) == []
    assert state.overdue(now=21) == [("w1", Cause.TIMEOUT)]


def test_workers_that_never_arrive_stop_the_sweep_after_the_limit() -> None:
    state = SweepState(3, start_failure_limit=3)
    state.add_workers(["a", "b", "c"])
    for worker in ["a", "b"]:
        applied(state, state.worker_ended(ExitInfo(worker, exited=True, exit_status=1), now=0))
        assert state.start_failure is None
    applied(state, state.worker_ended(ExitInfo("c", exited=True, exit_status=1), now=0))
    assert state.start_failure is not None
    assert state.start_failure.count == 3 and state.start_failure.worker == "c"


def test_a_worker_getting_going_resets_the_start_failure_count() -> None:
    state = SweepState(3, start_failure_limit=2)
    state.add_workers(["a", "b", "c"])
    applied(state, state.worker_ended(ExitInfo("a", exited=True, exit_status=1), now=0))
    state.hello("b")
    lease_one(state, "b", now=0)
    applied(state, state.worker_ended(ExitInfo("c", exited=True, exit_status=1), now=0))
    assert state.start_failure is None


def test_workers_that_reach_the_server_but_cannot_load_the_function_count_as_not_starting() -> None:
    state = SweepState(3, start_failure_limit=2)
    state.add_workers(["a", "b"])
    for worker in ["a", "b"]:
        state.hello(worker)
        state.setup_failed(worker, "ModuleNotFoundError: No module named 'mine'")
        assert lease_one(state, worker, now=0) is None
        applied(state, state.worker_ended(ExitInfo(worker, exited=True, exit_status=71), now=0))
    assert state.start_failure is not None
    assert state.start_failure.count == 2
    assert state.start_failure.setup_error is not None
    assert "No module named 'mine'" in state.start_failure.setup_error


def test_surplus_workers_are_removed_once_all_tasks_are_leased_and_their_endings_ignored() -> None:
    state = SweepState(1)
    state.add_workers(["a", "b", "c"])
    state.hello("a")
    assert state.surplus_workers() == []  # a task is still pending
    lease_one(state, "a", 0)
    assert sorted(state.surplus_workers()) == ["b", "c"]
    applied(state, state.worker_ended(ExitInfo("b", aborted=True), now=1))
    assert state.health.early_deaths == 0


def test_workers_are_submitted_only_when_no_spare_worker_exists() -> None:
    state = SweepState(10, max_workers=4)
    assert state.workers_to_submit() == 4
    state.add_workers(["a", "b", "c", "d"])
    assert state.workers_to_submit() == 0  # four queued workers will take the tasks
    for worker in "abcd":
        state.hello(worker)
        lease_one(state, worker, 0)
    assert state.workers_to_submit() == 0  # the pool is full
    applied(state, state.worker_ended(ExitInfo("a", signaled=True, signal="SIGKILL"), now=1))
    assert state.workers_to_submit() == 1


def test_tasks_per_worker_retires_a_worker() -> None:
    state = started(3, tasks_per_worker=1)
    lease_one(state, "w1", 0)
    finish(state, "w1", 0, 1, Cause.RESULT, 1)
    assert lease_one(state, "w1", 1) is None
    assert state.workers_to_submit() == 2


def test_resume_skips_done_tasks() -> None:
    state = started(3, done=[0, 2])
    leased = lease_one(state, "w1", 0)
    assert leased is not None
    assert leased.task == 1
    assert state.lease("w1", 0)[0].task == 1  # asked again holding it: the answer was lost, it comes again


def test_cancel_ends_running_attempts_and_gives_no_more_work() -> None:
    state = started(2, workers=("a", "b"))
    attempt = lease_one(state, "a", 0)
    assert attempt is not None
    applied(state, state.cancel(1))
    assert attempt.cause is Cause.CANCELLED
    assert state.tasks.states[0] is TaskState.PENDING and not state.tasks.running
    assert all(w.terminated for w in state.workers) and lease_one(state, "b", 2) is None


def test_a_worker_near_its_runtime_limit_starts_no_task_it_cannot_finish() -> None:
    state = SweepState(4, walltime=20.0)
    state.add_workers(["w1"])
    state.hello("w1", now=100.0)
    first = lease_one(state, "w1", now=100.0)  # a fresh worker always takes one: nothing would fit better
    assert first is not None
    finish(state, "w1", first.task, 1, Cause.RESULT, now=106.0)  # tasks take about 6 s
    second = lease_one(state, "w1", now=106.0)  # 11 s left (after the slack) for 7.5 s expected: fits
    assert second is not None
    finish(state, "w1", second.task, 1, Cause.RESULT, now=112.0)
    assert lease_one(state, "w1", now=112.0) is None  # 5 s left: it retires
    assert state.workers.all["w1"].retiring and state.workers_to_submit() == 2  # fresh workers take its place


def test_the_users_task_time_guides_leasing_until_tasks_have_finished() -> None:
    state = SweepState(2, walltime=60.0, task_time=50.0)
    state.add_workers(["w1"])
    state.hello("w1", now=0.0)
    first = lease_one(state, "w1", now=0.0)
    assert first is not None
    finish(state, "w1", first.task, 1, Cause.RESULT, now=1.0)  # one finished: now the real figure counts
    assert lease_one(state, "w1", now=1.0) is not None
    assert SweepState(1, walltime=60.0, task_time=50.0).batches.expected_task_seconds() == 62.5


def test_a_task_ended_at_its_workers_limit_after_a_late_start_is_retried_without_counting() -> None:
    state = SweepState(2, walltime=20.0, retries=0)
    state.add_workers(["w1"])
    state.hello("w1", now=0.0)
    first = lease_one(state, "w1", now=0.0)
    assert first is not None
    finish(state, "w1", first.task, 1, Cause.RESULT, now=5.0)
    late = lease_one(state, "w1", now=5.0)
    assert late is not None
    [ended] = applied(state, state.worker_ended(ExitInfo("w1", signaled=True, signal="SIGKILL"), now=20.1))
    assert ended is late and ended.cause is Cause.WALLTIME and ended.detail.fits_fresh_worker
    assert state.tasks.states[late.task] is TaskState.PENDING  # even with retries=0
    assert state.tasks.failure_counts.get(late.task, 0) == 0 and "not counted" in str(ended.detail.summary)


def test_a_task_longer_than_the_whole_runtime_limit_fails_at_once_naming_the_option() -> None:
    state = SweepState(1, walltime=20.0, retries=3)
    state.add_workers(["w1"])
    state.hello("w1", now=0.0)
    lease_one(state, "w1", now=0.5)
    slurm_exit_0 = ExitInfo("w1", exited=True, exit_status=0)
    [ended] = applied(state, state.worker_ended(slurm_exit_0, now=19.0))
    assert ended.cause is Cause.WALLTIME and state.tasks.states[0] is TaskState.FAILED
    assert "ran for the whole runtime limit of 20 s" in str(ended.detail.summary)
    assert "walltime=" in str(ended.detail.summary)


def test_each_lost_task_gets_a_replacement_worker_beyond_the_spare_ones() -> None:
    state = SweepState(5, max_workers=10)
    state.add_workers(["w1", "w2", "w3", "queued"])
    for worker in ("w1", "w2", "w3"):
        state.hello(worker)
        lease_one(state, worker, now=0)
    for worker in ("w1", "w2", "w3"):  # their node died: three tasks are pending again
        applied(state, state.worker_ended(ExitInfo(worker, aborted=True), now=1))
    assert state.tasks.n_pending == 5 and state.workers_to_submit() == 4  # "queued" may take one, not all


def test_a_workers_first_task_ended_at_its_limit_had_the_whole_limit() -> None:
    state = SweepState(1, walltime=20.0, retries=3)
    state.add_workers(["w1"])
    state.hello("w1", now=0.0)
    lease_one(state, "w1", now=10.0)  # its first task, however late (loading f took long, say)
    [ended] = applied(state, state.worker_ended(ExitInfo("w1", signaled=True, signal="SIGKILL"), now=20.0))
    assert ended.cause is Cause.WALLTIME and not ended.detail.fits_fresh_worker
    assert state.tasks.states[0] is TaskState.FAILED


def test_a_walltime_end_is_retried_uncounted_once_at_most() -> None:
    state = SweepState(2, walltime=20.0, retries=1)
    outcomes: list[tuple[int, bool | None, int]] = []
    for round_, worker in enumerate(["a", "b"]):
        state.add_workers([worker])
        state.hello(worker, now=100.0 * round_)
        state.workers.all[worker].tasks_leased = 1  # as if it had finished another task first
        attempt = lease_one(state, worker, now=100.0 * round_ + 5)
        assert attempt is not None
        killed = ExitInfo(worker, signaled=True, signal="SIGKILL")
        [ended] = applied(state, state.worker_ended(killed, now=100.0 * round_ + 20))
        failures = state.tasks.failure_counts.get(attempt.task, 0)
        outcomes.append((attempt.task, ended.detail.fits_fresh_worker, failures))
    assert outcomes == [(0, True, 0), (0, False, 1)]  # the second time it counts, as any failure


# -- batches -----------------------------------------------------------------------------------

def run_batch(state: SweepState, worker: str, now: float, seconds: float = 0.0001) -> int:
    """Lease a batch and report every task of it done, each having taken ``seconds``."""
    batch = state.lease(worker, now)
    for attempt in batch:
        finish(state, worker, attempt.task, attempt.number, Cause.RESULT, now, quick(seconds))
    return len(batch)


def test_batches_of_short_tasks_double_from_one_up_to_a_fair_share_of_what_is_left() -> None:
    state = started(100_000, workers=("a", "b"))
    sizes = [run_batch(state, "a", now) for now in range(14)]
    assert sizes[:6] == [1, 2, 4, 8, 16, 32]
    assert max(sizes) == MAX_BATCH
    assert state.tasks.n_done == sum(sizes)
    tail = started(40, workers=("a", "b", "c", "d"))
    run_batch(tail, "a", 0)
    for _ in range(5):
        run_batch(tail, "a", 1)
    assert tail.tasks.n_pending < 40 and all(len(tail.lease(w, 2)) <= max(tail.tasks.n_pending // 8, 1) for w in "b")


def test_tasks_that_take_seconds_come_one_at_a_time() -> None:
    state = started(100)
    sizes = [run_batch(state, "w1", now, seconds=2.0) for now in range(10)]
    assert sizes == [1] * 10


def test_a_batch_holds_no_more_than_fits_in_the_timeout() -> None:
    state = started(10_000, timeout=1.0)
    sizes = [run_batch(state, "w1", now, seconds=0.05) for now in range(12)]
    assert max(sizes) == int(1.0 / 4 / (0.05 * 1.25))


def grown_batch(state: SweepState, worker: str = "w1", rounds: int = 6) -> list[Attempt]:
    """Grow a worker's batches (short tasks), then lease one more and return it unreported."""
    for now in range(rounds):
        run_batch(state, worker, now)
    batch = state.lease(worker, rounds)
    assert len(batch) > 4
    return batch


def test_a_worker_dying_with_a_batch_charges_only_the_task_it_named_the_rest_go_back_uncounted() -> None:
    state = started(1000, retries=3)
    batch = grown_batch(state)
    running = batch[2]
    finish(state, "w1", batch[0].task, batch[0].number, Cause.RESULT, 7, quick())
    state.task_died("w1", running.task, running.number, 4242)
    ended = applied(state, state.worker_ended(ExitInfo("w1", signaled=True, signal="SIGKILL"), now=8))
    charged, returned = ended[0], ended[1:]
    assert charged is running and charged.cause is Cause.SIGNAL and charged.detail.peak_rss_kb == 4242
    assert state.tasks.failure_counts == {running.task: 1}
    assert {a.task for a in returned} == {a.task for a in batch[1:]} - {running.task}
    assert all(a.cause is Cause.RETURNED and "not counted" in str(a.detail.summary) for a in returned)
    assert all(state.tasks.states[a.task] is TaskState.PENDING for a in batch[1:])
    assert running.task not in {a.task for a in state.tasks.failed_attempts.get(batch[1].task, [])}
    assert set(state.tasks.failed_attempts) == {running.task} and not state.tasks.running


def test_the_task_a_heartbeat_names_is_the_one_charged_and_its_start_is_the_workers_word() -> None:
    state = started(1000, heartbeat_timeout=5, timeout=30)
    batch = grown_batch(state)
    named = batch[3]
    state.heartbeat("w1", (named.task, named.number, 2.5), now=10)
    assert named.started == 7.5
    assert state.overdue(now=14) == [] and state.overdue(now=37.6) == [("w1", Cause.TIMEOUT)]
    ended = applied(state, state.expire("w1", Cause.TIMEOUT, now=37.6))
    assert ended[0] is named and ended[0].cause is Cause.TIMEOUT
    assert [a.cause for a in ended[1:]] == [Cause.RETURNED] * (len(batch) - 1)


def test_a_quiet_worker_with_a_batch_is_lost_after_the_heartbeat_timeout() -> None:
    state = started(1000, heartbeat_timeout=5)
    batch = grown_batch(state)
    assert state.overdue(now=6 + 4) == []
    assert state.overdue(now=6 + 6) == [("w1", Cause.LOST)]
    ended = applied(state, state.expire("w1", Cause.LOST, now=12))
    # Nobody named the task it ran: none is charged, each is tried alone next.
    assert ended == batch and all(a.cause is Cause.RETURNED for a in ended) and not state.tasks.failure_counts
    assert state.tasks.n_pending == 1000 - state.tasks.n_done and state.tasks.suspects == {a.task for a in batch}


def test_an_answer_lost_on_the_way_is_given_again_not_a_second_batch() -> None:
    state = started(1000)
    batch = grown_batch(state)
    assert state.lease("w1", 7) == batch


def test_returned_tasks_are_served_before_fresh_ones() -> None:
    state = started(1000, workers=("a", "b"))
    batch = grown_batch(state, "a")
    applied(state, state.worker_ended(ExitInfo("a", aborted=True), now=7))
    assert lease_one_or_more(state, "b", 8) == [batch[0].task]  # first, and alone: it is a suspect


def lease_one_or_more(state: SweepState, worker: str, now: float) -> list[int]:
    return [a.task for a in state.lease(worker, now)]


# -- workers the scheduler started that never reached the server ----------------------------------

def test_a_worker_started_but_silent_past_the_hello_timeout_is_written_off_with_its_host() -> None:
    state = started(10, workers=("a",), heartbeat_timeout=5, max_workers=3)
    state.add_workers(["b", "c"])
    lease_one(state, "a", 0)
    assert state.unresponsive({"a": "node1", "b": "node3"}, now=0) == []
    assert state.unresponsive({"b": "node3", "c": "node3"}, now=9) == []
    [stuck] = state.unresponsive({"b": "node3", "c": "node3"}, now=10.5)
    assert stuck.id == "b" and state.health.silent_hosts == {"node3"}
    assert "b" not in state.workers.in_phase(WorkerPhase.SUBMITTED) and state.workers.all["b"].terminated
    assert state.start_failure is None and state.health.early_deaths == 1
    [stuck] = state.unresponsive({"c": "node3"}, now=19.5)
    assert stuck.id == "c" and state.health.early_deaths == 1  # the same dead host counts once
    assert state.workers_to_submit() == 2


def test_a_silent_worker_on_a_host_that_answers_since_is_removed_without_blaming_the_host() -> None:
    state = started(10, workers=(), heartbeat_timeout=5)
    state.add_workers(["stale", "fresh"])
    state.unresponsive({"stale": "node1"}, now=0)  # shown running since before an outage, say
    state.hello("fresh", host="node1", now=3)
    [stuck] = state.unresponsive({"stale": "node1"}, now=11)
    assert stuck.id == "stale" and state.health.silent_hosts == set() and state.health.early_deaths == 0


def test_when_no_worker_ever_reached_the_server_one_silent_worker_ends_the_sweep() -> None:
    state = SweepState(10, heartbeat_timeout=5)
    state.add_workers(["a"])
    state.unresponsive({"a": "node1"}, now=0)
    state.unresponsive({"a": "node1"}, now=11)
    failure = state.start_failure
    assert failure is not None and "started on node1" in failure.ending.summary
    assert "never reached the server" in failure.ending.summary


def test_a_worker_told_to_leave_is_not_counted_in_the_width_however_long_the_scheduler_shows_it() -> None:
    state = started(5, workers=("a", "b"), max_workers=2, tasks_per_worker=1)
    for worker in ("a", "b"):
        attempt = lease_one(state, worker, 0)
        assert attempt is not None
        finish(state, worker, attempt.task, attempt.number, Cause.RESULT, 1)
        assert lease_one(state, worker, 1) is None  # retiring: the scheduler may show it running for minutes
    assert state.workers_to_submit() == 2


def test_a_worker_near_its_limit_gets_only_the_tasks_that_fit() -> None:
    state = SweepState(10_000, walltime=20.0)
    state.add_workers(["w1"])
    state.hello("w1", now=0.0)
    for now in range(6):
        run_batch(state, "w1", now, seconds=0.001)
    batch = state.lease("w1", now=16.95)  # 0.05 s left after the slack; a task is expected to take 1.25 ms
    assert len(batch) == 40  # not the 64 its batches had grown to


def test_a_whole_worker_killed_by_an_unnamed_later_task_charges_nobody_until_that_task_runs_alone() -> None:
    state = started(1000, retries=1, workers=("a",))
    batch = grown_batch(state, "a")
    innocent, culprit = batch[0], batch[1]  # the culprit kills the whole job before it could be named
    ended = applied(state, state.worker_ended(ExitInfo("a", signaled=True, signal="SIGKILL"), now=7))
    assert {a.cause for a in ended} == {Cause.RETURNED} and not state.tasks.failure_counts
    for worker in ["b", "c", "d"]:
        state.add_workers([worker])
        state.hello(worker, now=8)
        [alone] = state.lease(worker, now=8)
        if alone.task == innocent.task:
            finish(state, worker, alone.task, alone.number, Cause.RESULT, 9, quick())
        else:
            assert alone.task == culprit.task
            [charged] = applied(state, state.worker_ended(ExitInfo(worker, signaled=True, signal="SIGKILL"), now=9))
            assert charged.cause is Cause.SIGNAL
    assert state.tasks.states[innocent.task] is TaskState.DONE and innocent.task not in state.tasks.failure_counts
    assert state.tasks.failure_counts[culprit.task] == 2 and state.tasks.states[culprit.task] is TaskState.FAILED


def test_a_worker_that_never_reached_the_server_and_exited_zero_counts_as_not_starting() -> None:
    state = SweepState(3, start_failure_limit=2)
    state.add_workers(["a", "b"])
    for worker in ("a", "b"):
        wrapper_exit_0 = ExitInfo(worker, exited=True, exit_status=0)  # a wrapper that exits 0
        applied(state, state.worker_ended(wrapper_exit_0, now=0))
    assert state.start_failure is not None


def test_a_host_written_off_as_silent_is_taken_back_when_its_slow_worker_says_hello() -> None:
    state = started(10, workers=("a",), heartbeat_timeout=5)
    state.add_workers(["slow"])
    state.unresponsive({"slow": "node3"}, now=0)
    state.unresponsive({"slow": "node3"}, now=11)
    assert state.health.silent_hosts == {"node3"}
    assert not state.hello("slow", host="node3", now=12)  # written off: it is told to leave
    assert state.health.silent_hosts == set()


def test_a_worker_that_said_hello_but_never_asks_for_work_is_written_off() -> None:
    state = SweepState(10, heartbeat_timeout=5, max_workers=1)
    state.add_workers(["hung"])
    state.hello("hung", host="node1", now=0)
    assert state.workers_to_submit() == 0  # it counts as spare, for now
    assert state.unresponsive({}, now=9) == []
    [stuck] = state.unresponsive({}, now=11)
    assert stuck.id == "hung" and state.workers_to_submit() == 1 and state.health.early_deaths == 1
    assert state.health.last_early_death is not None
    assert "asked for no work" in state.health.last_early_death.ending.summary
