"""Real faults, injected from inside f or from outside, and what the sweep records and retries.

Executions are counted through files, so a retry is seen, not assumed.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from helpers import BackendName, Cluster, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import SweepFailed, WorkersCannotStart
from sheepdog_drmaa.store import Store

if TYPE_CHECKING:
    from sheepdog_drmaa.handle import Sweep


def note_execution(directory: str, key: int | str) -> int:
    """Append one line per execution of ``key``; return how many executions there have been."""
    path = os.path.join(directory, f"{key}.runs")
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    with open(path) as handle:
        return len(handle.readlines())


def executions(directory: str | pathlib.Path, key: int | str) -> int:
    path = os.path.join(directory, f"{key}.runs")
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        return len(handle.readlines())


def kill_self_first_time(directory: str, x: int) -> int:
    if note_execution(directory, x) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def exit_three(directory: str, x: int) -> NoReturn:
    note_execution(directory, x)
    os._exit(3)


def always_raises(directory: str, x: int) -> NoReturn:
    note_execution(directory, x)
    raise ArithmeticError(f"bad point {x}")


def raises_key_error_first_time(directory: str, x: int) -> int:
    if note_execution(directory, x) == 1:
        raise KeyError("transient")
    return x


def exits_with(directory: str, how: str) -> NoReturn:
    note_execution(directory, how)
    kind, status = how.split(":")
    if kind == "sys":
        sys.exit(int(status))
    os._exit(int(status))


def stop_self_first_time(directory: str, x: int) -> int:
    if note_execution(directory, x) == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    return x


def sleep_first_time(directory: str, x: int) -> int:
    if note_execution(directory, x) == 1:
        time.sleep(120)
    return x


def announce_and_sleep_first_time(directory: str, x: int) -> int:
    if note_execution(directory, x) == 1:
        from sheepdog_drmaa.worker_ids import worker_id_from_environment
        with open(os.path.join(directory, "job"), "w") as handle:
            handle.write(worker_id_from_environment())
        time.sleep(120)
    return x


@pytest.fixture
def sweep(backend: BackendName, store: str, tmp_path: pathlib.Path) -> Callable[..., Sweep]:
    """map_async with the test's backend and store; returns the handle after it ends."""
    def run(f: Callable[..., Any], items: Iterable[Any], **options: Any) -> Sweep:
        options.setdefault("progress", False)
        handle: Sweep = sheepdog_drmaa.map_async(f, [(str(tmp_path), item) for item in items], backend=backend,
                                          store=store, **options)
        assert handle.wait(180), "the sweep did not end within 180 s"
        return handle
    return run


def causes(handle: Sweep, index: int) -> list[str | None]:
    return [attempt.cause for attempt in handle.attempts(index)]


def test_sigkill_on_the_first_attempt_is_retried_and_succeeds(sweep: Callable[..., Sweep], tmp_path: pathlib.Path,
                                                              backend: BackendName) -> None:
    handle = sweep(kill_self_first_time, [1, 2])
    assert handle.results() == [2, 4]
    assert causes(handle, 0) == ["signal", "result"]
    assert "SIGKILL" in handle.attempts(0)[0].detail["summary"]
    if backend.scheduler != "slurm":  # slurm-drmaa reports no resource usage
        assert handle.attempts(0)[0].detail["resource_usage"]  # the scheduler's record of the killed worker
    assert executions(tmp_path, 1) == 2 and executions(tmp_path, 2) == 2


def test_an_exit_status_is_recorded_and_retried_until_the_budget_is_spent(sweep: Callable[..., Sweep],
                                                                          tmp_path: pathlib.Path) -> None:
    handle = sweep(exit_three, [7], retries=2)
    with pytest.raises(SweepFailed, match="status 3") as caught:
        handle.results()
    [failure] = caught.value.failures
    assert (failure.cause, failure.attempts) == ("exit", 3)
    assert [a.cause for a in failure.history] == ["exit", "exit", "exit"]
    assert executions(tmp_path, 7) == 3


def test_an_exception_is_reported_once_and_not_retried(sweep: Callable[..., Sweep], tmp_path: pathlib.Path) -> None:
    handle = sweep(always_raises, [5])
    with pytest.raises(SweepFailed, match="ArithmeticError: bad point 5"):
        handle.results()
    assert executions(tmp_path, 5) == 1


def test_an_exception_listed_in_retry_exceptions_is_retried(sweep: Callable[..., Sweep],
                                                            tmp_path: pathlib.Path) -> None:
    handle = sweep(raises_key_error_first_time, [3], retry_exceptions=(LookupError,))
    assert handle.results() == [3]
    assert causes(handle, 0) == ["exception", "result"]
    assert executions(tmp_path, 3) == 2


@pytest.mark.parametrize("how", ["sys:99", "sys:100"])
def test_sys_exit_99_and_100_are_task_failures_not_requeues(sweep: Callable[..., Sweep], tmp_path: pathlib.Path,
                                                            how: str) -> None:
    handle = sweep(exits_with, [how])
    with pytest.raises(SweepFailed, match="SystemExit") as caught:
        handle.results()
    assert caught.value.failures[0].attempts == 1
    assert executions(tmp_path, how) == 1


@pytest.mark.parametrize("how", ["os:99", "os:100"])
def test_os_exit_99_and_100_never_reach_grid_engine(sweep: Callable[..., Sweep], tmp_path: pathlib.Path,
                                                    how: str) -> None:
    handle = sweep(exits_with, [how], retries=1)
    with pytest.raises(SweepFailed) as caught:
        handle.results()
    failure = caught.value.failures[0]
    assert failure.cause == "exit" and "status 98" in failure.summary
    assert executions(tmp_path, how) == 2  # retried once by us, never requeued by the scheduler


def test_a_stopped_worker_is_detected_as_lost_terminated_and_retried(sweep: Callable[..., Sweep],
                                                                     tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    handle = sweep(stop_self_first_time, [4], heartbeat_interval=0.3, heartbeat_timeout=2)
    assert handle.results() == [4]
    assert causes(handle, 0) == ["lost", "result"]
    assert time.monotonic() - started < 60
    assert executions(tmp_path, 4) == 2


def test_a_task_over_the_timeout_is_terminated_and_retried(sweep: Callable[..., Sweep],
                                                           tmp_path: pathlib.Path) -> None:
    handle = sweep(sleep_first_time, [6], timeout=3)
    assert handle.results() == [6]
    assert causes(handle, 0) == ["timeout", "result"]
    assert executions(tmp_path, 6) == 2


def test_a_job_deleted_with_qdel_is_retried(store: str, tmp_path: pathlib.Path, cluster: Cluster) -> None:
    handle = sheepdog_drmaa.map_async(announce_and_sleep_first_time, [(str(tmp_path), 8)], backend="drmaa",
                                      store=store, progress=False)
    job_file = tmp_path / "job"
    wait_until(lambda: job_file.exists() and job_file.read_text().strip(), 60, "the task to start")
    cluster.delete(job_file.read_text())
    assert handle.wait(120)
    assert handle.results() == [8]
    first = handle.attempts(0)[0]
    assert first.cause == "aborted" and first.host, first
    assert causes(handle, 0)[1:] == ["result"]
    assert executions(tmp_path, 8) == 2


@pytest.mark.parametrize("python", ["/nonexistent/bin/python", "/bin/false"])
def test_workers_that_cannot_start_stop_the_sweep_quickly(backend: BackendName, store: str, python: str) -> None:
    started = time.monotonic()
    with pytest.raises(WorkersCannotStart) as caught:
        sheepdog_drmaa.map(abs, [1, 2, 3], backend=backend, store=store, python=python, progress=False)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "before they could run a task" in message and python in message
    if python == "/bin/false":
        assert "status 1" in message


def test_a_function_whose_module_the_nodes_cannot_import_stops_the_sweep_with_the_import_error(
        backend: BackendName, store: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "only_on_the_submit_host.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # A module this test writes and puts on sys.path just above: there is nothing for mypy to find.
    from only_on_the_submit_host import double  # type: ignore[import-not-found]
    with pytest.raises(WorkersCannotStart) as caught:
        sheepdog_drmaa.map(double, [1, 2, 3], backend=backend, store=store, progress=False,
                           env={"PYTHONPATH": "/nonexistent"})  # what the nodes would see
    message = str(caught.value)
    assert "could not load the function" in message
    assert "No module named 'only_on_the_submit_host'" in message


CTRL_C_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when pytest was started in the background
    # of a script (which starts it, and so this client, with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow(directory, x):
        with open(os.path.join(directory, f"{{x}}.pid"), "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(300)

    sheepdog_drmaa.map(slow, [({directory!r}, x) for x in range(2)], backend={backend!r},
                       store={store!r}, progress=False)
""")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_stopping_the_client_terminates_every_job_before_it_exits(backend: BackendName, store: str,
                                                                  tmp_path: pathlib.Path, stop: signal.Signals) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))
    script = tmp_path / "sweep.py"
    script.write_text(CTRL_C_SCRIPT.format(root=root, directory=str(tmp_path), backend=backend, store=store))
    client = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    pid_files = [tmp_path / f"{x}.pid" for x in range(2)]
    wait_until(lambda: all(p.exists() and p.read_text() for p in pid_files), 90, "both tasks to run")
    client.send_signal(stop)
    try:
        _, stderr = client.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        client.kill()
        pytest.fail(f"the client did not exit within 60 s of {stop.name}")
    assert client.returncode != 0
    assert ("KeyboardInterrupt" if stop == signal.SIGINT else "SweepCancelled") in stderr
    assert ("pass detach=True" in stderr) == (stop == signal.SIGHUP)  # what would have kept the sweep
    for pid_file in pid_files:  # every task process is gone once control returned
        pid = int(pid_file.read_text())
        assert not os.path.exists(f"/proc/{pid}") or pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_cancel_removes_running_and_queued_workers_of_a_large_array(store: str, tmp_path: pathlib.Path,
                                                                    cluster: Cluster) -> None:
    handle = sheepdog_drmaa.map_async(sleep_first_time, [(str(tmp_path), x) for x in range(300)], backend="drmaa",
                                      store=store, progress=False)
    wait_until(lambda: handle.status()["running"] >= 4, 60, "several tasks to run")
    assert cluster.queued_workers()  # workers still queued beside the running ones
    handle.cancel()
    assert handle.wait(0)
    with pytest.raises(sheepdog_drmaa.SweepCancelled):
        handle.results()
    counts = Store(store, readonly=True).counts(handle.id)
    assert counts.get("done", 0) == 0 and counts.get("running", 0) == 0


def sleep_two_seconds(directory: str, x: int) -> int:
    note_execution(directory, x)
    time.sleep(2)
    return x


def test_a_queued_worker_deleted_with_qdel_is_replaced(store: str, tmp_path: pathlib.Path, cluster: Cluster) -> None:
    handle = sheepdog_drmaa.map_async(sleep_two_seconds, [(str(tmp_path), x) for x in range(10)], backend="drmaa",
                                      store=store, progress=False, tasks_per_worker=1)
    queued = wait_until(cluster.queued_workers, 60, "queued workers")
    cluster.delete(queued[-1])
    assert handle.wait(120), "the sweep hung after a queued worker was deleted"
    assert handle.results() == list(range(10))
    assert all(executions(tmp_path, x) == 1 for x in range(10))
