"""Durable sweeps: a client killed midway, the same line run again, and the command line on the store."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import BackendName, Cluster, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import SweepLocked, SweepMismatch
from sheepdog_drmaa.model import Claim
from sheepdog_drmaa.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))

CLIENT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    def square(directory, x):
        with open(os.path.join(directory, f"{{x}}.runs"), "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
        if x >= 6 and not os.path.exists(os.path.join(directory, "go")):
            time.sleep(300)  # the second half waits until the test says go
        return x * x

    results = sheepdog_drmaa.map(square, [({directory!r}, x) for x in range(12)], backend={backend!r},
                                 store={store!r}, name="sweep-42", progress=False, workers=2)
    print("RESULTS", results)
""")


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped counts as ended)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def runs(directory: str | pathlib.Path, x: int) -> int:
    path = os.path.join(directory, f"{x}.runs")
    return len(pathlib.Path(path).read_text().splitlines()) if os.path.exists(path) else 0


def test_a_killed_client_resumes_without_rerunning_finished_tasks(backend: BackendName, store: str,
                                                                  tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "runs"
    directory.mkdir()
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(root=ROOT, directory=str(directory), backend=backend, store=store))
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Task 6 can start while task 5's result is still on its way to the store: wait for the store too.
    wait_until(lambda: runs(directory, 6) and _done(store, "sweep-42") >= 6, 120,
               "the first six tasks to be stored and the seventh to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    (directory / "go").write_text("")
    finished_before = list(range(6))
    assert _done(store, "sweep-42") >= 6, "a stored result was lost with the killed client"

    second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"RESULTS {[x * x for x in range(12)]}" in second.stdout
    for x in finished_before:
        assert runs(directory, x) == 1, f"finished task {x} ran again"
    # The process that ran task 6 for the killed client was stopped, not left to run it a second time.
    orphan = int((directory / "6.runs").read_text().splitlines()[0])
    wait_until(lambda: gone(orphan), 30, "the killed client's worker to be gone")
    # The killed client's attempt at task 6 is kept; the new client's attempt is numbered after it.
    attempts = sheepdog_drmaa.Sweep.open("sweep-42", store=store).attempts(6)
    assert [a.number for a in attempts] == [1, 2] and attempts[1].cause == "result"
    assert attempts[0].worker != attempts[1].worker
    if backend == "drmaa":
        wait_until(lambda: not Cluster(backend.scheduler).jobs(), 30, "no job to be left")


def test_mismatched_arguments_on_resume_are_refused(store: str) -> None:
    sheepdog_drmaa.map(abs, [-1, -2], backend="local", store=store, name="grid", progress=False)
    with pytest.raises(SweepMismatch, match="different arguments.*resume=False"):
        sheepdog_drmaa.map(abs, [-1, -3], backend="local", store=store, name="grid", progress=False)
    with pytest.raises(SweepMismatch, match="different function"):
        sheepdog_drmaa.map(str, [-1, -2], backend="local", store=store, name="grid", progress=False)
    assert sheepdog_drmaa.map(abs, [-1, -3], backend="local", store=store, name="grid", resume=False,
                              progress=False) == [1, 3]


def test_a_finished_named_sweep_returns_its_stored_results_without_running(store: str, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"

    def touch(x: int) -> int:
        with open(marker, "a") as handle:
            handle.write("x")
        return x
    assert sheepdog_drmaa.map(touch, [1, 2], backend="local", store=store, name="once", progress=False) == [1, 2]
    assert sheepdog_drmaa.map(touch, [1, 2], backend="local", store=store, name="once", progress=False) == [1, 2]
    assert marker.read_text() == "xx"


def test_a_live_sweep_of_the_same_name_is_locked(store: str) -> None:
    sweep = sheepdog_drmaa.map_async(lambda x: __import__("time").sleep(x), [5], backend="local", store=store,
                                     name="busy", progress=False)
    try:
        with pytest.raises(SweepLocked, match=f"process {os.getpid()}"):
            sheepdog_drmaa.map(lambda x: __import__("time").sleep(x), [5], backend="local", store=store,
                               name="busy", progress=False)
    finally:
        sweep.cancel()
    assert sweep.wait(30)


def test_a_store_written_by_a_killed_client_opens_cleanly(store: str, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import sheepdog_drmaa
        sheepdog_drmaa.map(time.sleep, [0.01] * 30 + [300], backend="local", store={store!r}, name="k",
                           progress=False, workers=1)
    """))
    client = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    wait_until(lambda: os.path.exists(store) and _done(store, "k") >= 30, 120, "30 tasks to finish")
    os.killpg(client.pid, signal.SIGKILL)
    client.wait(timeout=30)
    sweep = sheepdog_drmaa.Sweep.open("k", store=store)
    assert sweep.status()["done"] == 30
    assert len(list(sweep.as_completed())) == 30


def _done(store: str, name: str) -> int:
    try:
        database = Store(store, readonly=True)
        record = database.sweep_named(name)
        return database.counts(record.id).get("done", 0) if record else 0
    except Exception:
        return 0


def cli(store: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "sheepdog_drmaa", *args, "--store", store],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def flaky(directory: str, x: int) -> int:
    path = os.path.join(directory, f"{x}.runs")
    with open(path, "a") as handle:
        handle.write("run\n")
    if x == 1 and len(pathlib.Path(path).read_text().splitlines()) == 1:
        os._exit(3)
    if x == 2:
        raise ValueError("two is right out")
    return x


def test_the_command_line_on_finished_failed_and_retried_tasks(backend: BackendName, store: str,
                                                               tmp_path: pathlib.Path) -> None:
    with pytest.raises(sheepdog_drmaa.SweepFailed):
        sheepdog_drmaa.map(flaky, [(str(tmp_path), x) for x in range(4)], backend=backend, store=store,
                           name="mixed", progress=False)
    listing = cli(store, "list")
    assert "mixed" in listing and "failed" in listing
    status = json.loads(cli(store, "status", "mixed", "--json"))
    assert status["counts"] == {"done": 3, "failed": 1, "running": 0, "queued": 0}
    assert status["retried_tasks"] == 1
    assert status["failed_attempts_by_cause"] == {"exit": 1, "exception": 1}
    assert "done 3, failed 1" in cli(store, "status", "mixed")
    failures = cli(store, "failures", "mixed")
    assert "task 2" in failures and "two is right out" in failures and "Traceback" in failures
    lines = [json.loads(line) for line in cli(store, "results", "mixed").splitlines()]
    assert [line["result"] for line in lines if line["index"] != 2] == [0, 1, 3]
    pickled = tmp_path / "results.pickle"
    cli(store, "results", "mixed", "--pickle", str(pickled))
    import pickle
    loaded = pickle.loads(pickled.read_bytes())
    assert {k: v for k, v in loaded.items() if k != 2} == {0: 0, 1: 1, 3: 3}
    assert "cancelled" in cli(store, "cancel", "mixed")


def test_a_stale_claim_from_another_host_does_not_lock_the_sweep(store: str) -> None:
    sheepdog_drmaa.map(abs, [-1], backend="local", store=store, name="moved", progress=False)
    database = Store(store)
    record = database.sweep_named("moved")
    assert record is not None
    database.take_claim(record, Claim(pid=12345, host="another-host", started=None, token="t", seen=time.time()))
    with pytest.raises(SweepLocked, match="another-host"):
        sheepdog_drmaa.map(abs, [-1], backend="local", store=store, name="moved", progress=False)
    database.db.execute("UPDATE sweeps SET owner_seen = owner_seen - 3600 WHERE id = ?", (record.id,))
    database.db.commit()
    assert sheepdog_drmaa.map(abs, [-1], backend="local", store=store, name="moved", progress=False) == [1]
