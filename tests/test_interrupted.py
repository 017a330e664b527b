"""A sweep whose client stops driving it: removed and recorded interrupted when the interpreter exits;
shown as interrupted, driver gone, when its client was killed. On every backend."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import BackendName, alive, cli, no_job_left, wait_until

import sheepdog_drmaa
from sheepdog_drmaa.model import Claim, SweepPhase
from sheepdog_drmaa.store import Store

SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    def slow(directory, x):
        with open(os.path.join(directory, f"{{x}}.pid"), "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(300)

    tasks = [({directory!r}, x) for x in range(2)]
    sweep = sheepdog_drmaa.{call}(slow, tasks, backend={backend!r}, store={store!r}, progress=False, name="long")
    while not all(os.path.exists(os.path.join({directory!r}, f"{{x}}.pid")) for x in range(2)):
        time.sleep(0.1)
    raise RuntimeError("the script's own error, after map_async")
""")


def start_client(call: str, backend: BackendName, store: str, directory: pathlib.Path) -> subprocess.Popen[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))
    script = directory / "sweep.py"
    script.write_text(SCRIPT.format(root=root, directory=str(directory), backend=str(backend), store=store, call=call))
    return subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)


def task_pids(directory: pathlib.Path) -> list[int]:
    wait_until(lambda: all((directory / f"{x}.pid").exists() and (directory / f"{x}.pid").read_text()
                           for x in range(2)), 90, "both tasks to run")
    return [int((directory / f"{x}.pid").read_text()) for x in range(2)]


def status(store: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "sheepdog_drmaa", "status", "long", "--json", "--store", store],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_a_script_that_raises_after_map_async_leaves_no_worker_and_an_interrupted_sweep(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    client = start_client("map_async", backend, store, tmp_path)
    pids = task_pids(tmp_path)
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 1 and "RuntimeError: the script's own error" in stderr
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "every task process to end")
    no_job_left(backend, store, "long")
    shown = status(store)
    assert shown["state"] == "interrupted" and shown["driver_gone"] is False
    assert shown["counts"] == {"done": 0, "failed": 0, "running": 0, "queued": 2}


def test_a_client_killed_mid_sweep_shows_interrupted_driver_gone_until_cancelled(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    client = start_client("map", backend, store, tmp_path)
    pids = task_pids(tmp_path)
    client.send_signal(signal.SIGKILL)
    client.communicate(timeout=60)
    shown = status(store)
    assert shown["state"] == "interrupted" and shown["driver_gone"] is True
    text = subprocess.run([sys.executable, "-m", "sheepdog_drmaa", "status", "long", "--store", store],
                          capture_output=True, text=True, timeout=60, cwd="/").stdout
    assert "interrupted (driver gone)" in text and "`sheepdog-drmaa resume long` to drive it on" in text
    listed = subprocess.run([sys.executable, "-m", "sheepdog_drmaa", "list", "--store", store],
                            capture_output=True, text=True, timeout=60, cwd="/").stdout
    assert "interrupted (driver gone)" in listed
    cancelled = subprocess.run([sys.executable, "-m", "sheepdog_drmaa", "cancel", "long", "--store", store],
                               capture_output=True, text=True, timeout=120, cwd="/")
    assert cancelled.returncode == 0, cancelled.stderr
    wait_until(lambda: not any(alive(pid) for pid in pids), 30, "the killed client's tasks to be removed")
    no_job_left(backend, store, "long")
    assert status(store)["state"] == "cancelled"


DRIVEN_ELSEWHERE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    def paced(x):
        deadline = time.time() + 300
        while not os.path.exists({gate!r}) and time.time() < deadline:  # held until the test says go
            time.sleep(0.05)
        time.sleep(0.1 * x)
        return x * x

    print(sheepdog_drmaa.map(paced, range(8), backend={backend!r}, store={store!r}, progress=False,
                             name="elsewhere", workers=2))
""")


def test_a_sweep_driven_by_another_process_is_followed_until_it_ends(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))
    script = tmp_path / "driver.py"
    gate = tmp_path / "go"
    script.write_text(DRIVEN_ELSEWHERE.format(root=root, backend=str(backend), store=store, gate=str(gate)))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def opened() -> sheepdog_drmaa.Sweep | None:
            try:
                return sheepdog_drmaa.Sweep.open("elsewhere", store=store)
            except (KeyError, sheepdog_drmaa.StoreError):
                return None
        sweep = wait_until(opened, 90, "the sweep to be stored")
        with pytest.raises(TimeoutError, match="has not ended within 0.2 s"):
            sweep.results(timeout=0.2)
        gate.write_text("")
        followed = list(sweep.as_completed(timeout=120))
        assert sorted(followed) == [(x, x * x) for x in range(8)]  # each task once, none made up
        assert sweep.wait(0) and sweep.results() == [x * x for x in range(8)]
        assert sheepdog_drmaa.Sweep.open("elsewhere", store=store).results(timeout=0) == [x * x for x in range(8)]
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_wait_says_how_the_sweep_ended_in_its_exit_status(store: str) -> None:
    sheepdog_drmaa.map(abs, [-1, -2], backend="local", store=store, progress=False, name="done")
    sheepdog_drmaa.map(fails_on_three, range(5), backend="local", store=store, progress=False, name="failed",
                       errors="return")
    sheepdog_drmaa.map(abs, [-1], backend="local", store=store, progress=False, name="cancelled")
    assert cli(store, "cancel", "cancelled").returncode == 0
    sheepdog_drmaa.map(abs, [-1], backend="local", store=store, progress=False, name="gone")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    database = Store(store)
    record = database.sweep_named("gone")
    assert record is not None
    database.take_claim(record, Claim(pid=int(dead.stdout), host=socket.gethostname(), started="1", token="t",
                                      seen=time.time()))
    database.set_sweep_state(record.id, SweepPhase.RUNNING)  # as a client killed mid-sweep leaves it
    database.close()
    for name, status, state in [("done", 0, "finished"), ("failed", 1, "failed"), ("cancelled", 2, "cancelled"),
                                ("gone", 2, "interrupted")]:
        waited = cli(store, "wait", name, "--json")
        assert waited.returncode == status, (name, waited.stdout, waited.stderr)
        assert json.loads(waited.stdout)["state"] == state
    assert "interrupted (driver gone)" in cli(store, "wait", "gone").stdout


def has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    descriptors = pathlib.Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == os.path.realpath(path) for fd in descriptors.iterdir())
    except OSError:
        return False


ATTACH = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from sheepdog_drmaa.cli import main; sys.exit(main(sys.argv[1:]))")


def test_ctrl_c_leaves_attach_and_the_sweep_goes_on(backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))
    script = tmp_path / "driver.py"
    gate = tmp_path / "go"
    script.write_text(DRIVEN_ELSEWHERE.format(root=root, backend=str(backend), store=store, gate=str(gate)))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: cli(store, "status", "elsewhere").returncode == 0, 90, "the sweep to be stored")
        attached = subprocess.Popen([sys.executable, "-c", ATTACH, "attach", "elsewhere", "--store", store],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        wait_until(lambda: has_open(attached.pid, store), 30, "attach to open the store")  # following it
        assert attached.poll() is None, attached.communicate()
        attached.send_signal(signal.SIGINT)
        _, said = attached.communicate(timeout=30)
        assert attached.returncode == 0 and "left sweep elsewhere; it goes on" in said
        assert client.poll() is None  # the sweep goes on
        gate.write_text("")
        followed = cli(store, "attach", "elsewhere")  # attached again, to the end
        assert followed.returncode == 0 and "elsewhere: finished" in followed.stdout
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0 and str([x * x for x in range(8)]) in out, err
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
