"""Sweeps that outlive their client: driven by a process of their own (detach=True), which survives
the caller's session closing and the caller's death; resumed from the store alone once that driver
is killed. On every backend."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import pytest
from helpers import BackendName, alive, cli, no_job_left, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import control
from sheepdog_drmaa.backends.local import LocalBackend
from sheepdog_drmaa.errors import ConfigurationError, SheepdogError
from sheepdog_drmaa.model import SweepPhase
from sheepdog_drmaa.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))

# A caller as a user's script would be, started in a session of its own as an ssh login is: it
# detaches a sweep, says so, and then waits (as the shell would) until the test closes its session.
CALLER = textwrap.dedent("""
    import os, sys, time, uuid
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    def marked(directory, x, seconds, held):
        with open(os.path.join(directory, f"{{x}}-{{uuid.uuid4().hex}}.run"), "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(seconds)
        deadline = time.monotonic() + 90
        while held and not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
            time.sleep(0.05)
        return x * x

    tasks = [({directory!r}, x, {seconds}, x >= {held_from}) for x in range({n})]
    sweep = sheepdog_drmaa.map_async(marked, tasks, backend={backend!r}, store={store!r}, progress=False,
                                     name={name!r}, workers=4, detach=True)
    print("detached", sweep.name, os.getpid(), flush=True)
    time.sleep(600)
""")


def start_caller(tmp_path: pathlib.Path, backend: BackendName, store: str, name: str, n: int,
                 seconds: float, held_from: int | None = None) -> subprocess.Popen[str]:
    """The caller, in its own session, once it has detached its sweep; tasks from ``held_from`` on
    run until the file ``runs/release`` appears (at most 90 s)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(root=ROOT, directory=str(runs), backend=str(backend), store=store, name=name,
                                    n=n, seconds=seconds, held_from=n if held_from is None else held_from))
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, cwd=tmp_path)
    assert caller.stdout is not None
    line = caller.stdout.readline()
    if not line.startswith("detached"):
        caller.kill()
        pytest.fail(f"the caller did not detach its sweep: {line}{caller.communicate()[1]}")
    return caller


def runs_of(tmp_path: pathlib.Path, index: int) -> list[pathlib.Path]:
    return list((tmp_path / "runs").glob(f"{index}-*.run"))


def driver_pid(store: str, name: str) -> int:
    record = Store(store, readonly=True).sweep_named(name)
    assert record is not None and record.owner is not None
    return record.owner.pid


def status(store: str, name: str) -> dict[str, Any]:
    shown = cli(store, "status", name, "--json")
    assert shown.returncode == 0, shown.stderr
    answer: dict[str, Any] = json.loads(shown.stdout)
    return answer


def results(store: str, name: str) -> dict[int, Any]:
    listed = cli(store, "results", name)
    assert listed.returncode == 0, listed.stderr
    return {row["index"]: row["result"] for row in map(json.loads, listed.stdout.splitlines())}


def test_a_detached_sweep_outlives_its_session_closed_by_sighup_and_its_caller_killed(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    caller = start_caller(tmp_path, backend, store, "weekend", n=20, seconds=2)
    driver = driver_pid(store, "weekend")
    assert driver != caller.pid and os.getsid(driver) != os.getsid(caller.pid)
    os.killpg(caller.pid, signal.SIGHUP)  # the ssh session closes ...
    caller.kill()  # ... and its caller is gone for good
    caller.communicate(timeout=30)
    assert alive(driver)
    waited = cli(store, "wait", "weekend", timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "weekend: finished" in waited.stdout
    assert results(store, "weekend") == {x: x * x for x in range(20)}
    assert all(len(runs_of(tmp_path, x)) == 1 for x in range(20))
    wait_until(lambda: not alive(driver), 30, "the driver to exit once the sweep ended")
    no_job_left(backend, store, "weekend")


def test_a_killed_driver_is_shown_interrupted_and_resumed_without_rerunning_finished_tasks(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    caller = start_caller(tmp_path, backend, store, "resumable", n=12, seconds=0.2, held_from=3)
    caller.kill()
    caller.communicate(timeout=30)
    driver = driver_pid(store, "resumable")
    # Tasks 0-2 finish; the others run until released, so the driver is killed mid-sweep however fast
    # the scheduler is.
    wait_until(lambda: status(store, "resumable")["counts"]["done"] == 3, 120, "three tasks to finish")
    refused = cli(store, "resume", "resumable")  # its driver lives: nothing changes
    assert refused.returncode == 2 and f"is driven by process {driver}" in refused.stderr
    assert driver_pid(store, "resumable") == driver
    os.kill(driver, signal.SIGKILL)
    store_now = Store(store, readonly=True)
    record = store_now.sweep_named("resumable")
    assert record is not None
    finished_before = set(store_now.tasks_in_state(record.id, "done"))  # nothing is stored after the kill
    assert finished_before == {0, 1, 2}
    left_by_driver = [worker for worker, _, _ in store_now.live_workers(record.id)]
    assert left_by_driver
    shown = wait_until(lambda: (lambda s: s if s["state"] == "interrupted" else None)(status(store, "resumable")),
                       5, "status to show the sweep interrupted")
    (tmp_path / "runs" / "release").touch()  # the tasks of the resumed sweep run to their end
    assert shown["driver_gone"] is True
    assert "`sheepdog-drmaa resume resumable` to drive it on" in cli(store, "status", "resumable").stdout

    resumed = cli(store, "resume", "resumable")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed sweep resumable: driven by process" in resumed.stdout
    assert cli(store, "wait", "resumable", timeout=300).returncode == 0
    assert results(store, "resumable") == {x: x * x for x in range(12)}
    assert all(len(runs_of(tmp_path, x)) == 1 for x in finished_before)  # none ran again
    assert not Store(store, readonly=True).live_workers(record.id)
    pids = [int(run.read_text()) for x in range(12) for run in runs_of(tmp_path, x)]
    wait_until(lambda: not any(alive(pid) for pid in pids), 30, "every worker of both drivers to end")
    no_job_left(backend, store, "resumable")
    log = (pathlib.Path(store).parent / "logs" / record.id / control.DRIVER_LOG).read_text()
    assert f"terminating {len(left_by_driver)} workers left by an earlier client" in log


def squares_slowly(x: int) -> int:
    time.sleep(0.2)
    return x * x


def test_map_with_detach_waits_for_the_sweep_and_returns_its_results(store: str) -> None:
    assert sheepdog_drmaa.map(squares_slowly, range(6), backend="local", workers=3, store=store, progress=False,
                              detach=True, name="detached-map") == [x * x for x in range(6)]
    record = Store(store, readonly=True).sweep_named("detached-map")
    assert record is not None and record.state == SweepPhase.FINISHED.value and record.owner is None


def test_sheepdog_detach_sets_the_default_and_a_name_is_made_and_said(
        store: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHEEPDOG_DETACH", "1")
    sweep = sheepdog_drmaa.map_async(squares_slowly, range(4), backend="local", workers=2, store=store)
    assert sweep.run is None and sweep.name is not None and sweep.name.startswith("squares_slowly-")
    assert f"sweep {sweep.name} runs detached" in capfd.readouterr().err
    assert sweep.results(timeout=60) == [0, 1, 4, 9]


def sleeps_long(x: int) -> int:
    time.sleep(300)
    return x


def test_cancel_on_a_detached_handle_stops_its_driver_and_every_worker(store: str) -> None:
    sweep = sheepdog_drmaa.map_async(sleeps_long, range(3), backend="local", workers=3, store=store, progress=False,
                                     detach=True, name="to-cancel")
    wait_until(lambda: sweep.status()["running"] == 3, 60, "the tasks to run")
    workers = Store(store, readonly=True).live_workers(sweep.id)
    driver = driver_pid(store, "to-cancel")
    sweep.cancel()
    assert sweep.record.state == SweepPhase.CANCELLED.value
    wait_until(lambda: not alive(driver), 30, "the driver to exit")
    groups = [group for _, _, group in workers]
    assert groups and all(group is not None for group in groups)
    wait_until(lambda: not any(alive(group) for group in groups if group is not None), 30, "the workers to end")
    with pytest.raises(sheepdog_drmaa.SweepIncomplete):
        sweep.results()


def test_detach_refuses_a_backend_object_before_anything_is_stored(store: str) -> None:
    with pytest.raises(ConfigurationError, match="detach=True hands the sweep to another process"):
        sheepdog_drmaa.map_async(squares_slowly, range(2), backend=LocalBackend(slots=1), store=store, detach=True)
    assert not os.path.exists(store)


def test_a_driver_that_cannot_start_the_sweep_says_why_and_leaves_it_resumable(store: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    sweep = sheepdog_drmaa.map_async(sleeps_long, range(2), backend="local", store=store, progress=False,
                                     detach=True, name="port-taken", host="127.0.0.1", port=port)
    killed = driver_pid(store, "port-taken")
    os.kill(killed, signal.SIGKILL)  # the sweep is left stored as running, its driver dead
    wait_until(lambda: status(store, "port-taken")["driver_gone"], 10, "the driver to be seen gone")
    with socket.socket() as holder:  # the port is taken when the sweep is resumed
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        failed = cli(store, "resume", "port-taken")
        assert failed.returncode == 2, failed.stdout
        assert "stopped before it started the sweep" in failed.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in failed.stderr  # the driver's log, quoted
        shown = status(store, "port-taken")
        assert shown["driver_gone"] is True and shown["owner"] is None
    resumed = cli(store, "resume", "port-taken")  # the port free again
    assert resumed.returncode == 0, resumed.stderr
    wait_until(lambda: sweep.status()["running"] == 2, 60, "the resumed sweep's tasks to run")
    assert cli(store, "cancel", "port-taken").returncode == 0


def test_a_sweep_stored_by_an_earlier_version_cannot_be_resumed_and_says_how_to_go_on(
        store: str, tmp_path: pathlib.Path) -> None:
    sweep = sheepdog_drmaa.map_async(sleeps_long, range(1), backend="local", store=store, progress=False,
                                     name="old")
    sweep.cancel()
    sweep.store.close()
    with sqlite3.connect(store) as db:  # as schema 2 stored it: no launch
        db.execute("ALTER TABLE sweeps DROP COLUMN launch")
        db.execute("PRAGMA user_version = 2")
    db.close()
    listed = cli(store, "list")
    assert listed.returncode == 0 and "old" in listed.stdout  # read-only: not upgraded, still readable
    resumed = cli(store, "resume", "old")
    assert resumed.returncode == 2 and "run its script again with name='old'" in resumed.stderr
    database = Store(store)  # upgraded on a read-write open; its sweep still has no launch
    record = database.sweep_named("old")
    assert record is not None and record.launch is None
    with pytest.raises(SheepdogError, match="stored without what another process needs"):
        control.start_driver(database, record, record.owner or _claim())
    database.close()


def _claim() -> Any:
    from sheepdog_drmaa import claims
    return claims.for_this_process()


def test_the_launch_keeps_the_callers_environment_and_directory_for_a_later_resume(
        store: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SGE_CELL", "elsewhere")  # a scheduler setting: kept for a driver started from another shell
    marker = uuid.uuid4().hex
    sweep = sheepdog_drmaa.map_async(sleeps_long, range(1), backend="local", store=store, progress=False,
                                     name="launch", env={"MARKER": marker}, retry_exceptions=(KeyError,))
    sweep.cancel()
    record = Store(store, readonly=True).sweep_named("launch")
    assert record is not None and record.launch is not None
    launch = record.launch
    assert launch.working_directory == str(tmp_path) and launch.environment["MARKER"] == marker
    assert launch.options["store"] == os.path.abspath(store) and launch.options["detach"] is False
    assert launch.options["retry_exceptions"] == ["builtins.KeyError"]
    assert launch.scheduler_environment["SGE_CELL"] == "elsewhere" and "MARKER" not in launch.scheduler_environment
