"""Each attempt's stdout and stderr, kept with the attempt: prints, C-level writes and subprocesses."""
from __future__ import annotations

import ast
import ctypes
import json
import os
import pathlib
import subprocess
import sys

import pytest
from helpers import BackendName

import sheepdog_drmaa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))


def run_cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sheepdog_drmaa", *args, "--store", store], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def noisy(x: int) -> int:
    print(f"python print {x}")
    os.write(1, f"raw write {x}\n".encode())
    subprocess.run(["sh", "-c", f"echo subprocess {x}; echo 'to stderr {x}' >&2"], check=True)
    ctypes.CDLL(None).printf(b"c printf %d\n", x)  # C stdio: block-buffered into a file
    sys.stderr.write(f"python stderr {x}\n")
    if x == 2:
        raise ValueError("two")
    return x


def test_each_attempt_keeps_what_its_task_printed(backend: BackendName, store: str) -> None:
    results = sheepdog_drmaa.map(noisy, range(3), backend=backend, store=store, progress=False, errors="return",
                                 name="noisy")
    assert results[:2] == [0, 1]
    sweep = sheepdog_drmaa.Sweep.open("noisy", store=store)
    for x in range(3):
        attempt = sweep.attempts(x)[-1]
        assert attempt.stdout.splitlines() == [f"python print {x}", f"raw write {x}", f"subprocess {x}",
                                               f"c printf {x}"]
        assert f"to stderr {x}" in attempt.stderr and f"python stderr {x}" in attempt.stderr
        assert not any(f"print {other}" in attempt.stdout for other in range(3) if other != x)
    assert "its stderr ended with" in results[2].describe() and "python stderr 2" in results[2].describe()


def chatty(n: int) -> int:
    for line in range(n):
        print(f"line {line:06d}")
    return n


def test_long_output_keeps_its_head_and_tail(store: str) -> None:
    sheepdog_drmaa.map(chatty, [50_000], backend="local", store=store, progress=False, name="chatty",
                       output_limit="4K")
    stdout = sheepdog_drmaa.Sweep.open("chatty", store=store).attempts(0)[0].stdout
    assert stdout.startswith("line 000000\n") and stdout.rstrip().endswith("line 049999")
    assert "bytes left out" in stdout and len(stdout) < 4096 + 100


def test_the_logs_command_shows_an_attempts_output(store: str) -> None:
    with pytest.raises(sheepdog_drmaa.SweepFailed):
        sheepdog_drmaa.map(noisy, [2], backend="local", store=store, progress=False, name="logs")
    shown = run_cli(store, "logs", "logs", "0")
    assert shown.returncode == 0, shown.stderr
    assert "--- stdout of task 0 attempt 1" in shown.stdout and "python print 2" in shown.stdout
    assert "--- stderr of task 0 attempt 1" in shown.stdout and "to stderr 2" in shown.stdout
    as_json = json.loads(run_cli(store, "logs", "logs", "0", "--attempt", "1", "--json").stdout)
    assert as_json["cause"] == "exception" and "python stderr 2" in as_json["stderr"]
    missing = run_cli(store, "logs", "logs", "0", "--attempt", "5")
    assert missing.returncode == 2 and "its attempts are 1" in missing.stderr


def test_frames_of_code_that_travelled_by_value_get_their_file_and_lines_back(tmp_path: pathlib.Path) -> None:
    from sheepdog_drmaa.records import with_source_file
    script = tmp_path / "sweep.py"
    script.write_text("import math\n\ndef f(x):\n    return math.sqrt(x) / 0\n")
    remote = ('Traceback (most recent call last):\n  File "<dynamic-code>", line 4, in f\n'
              'ZeroDivisionError: float division by zero\n')  # as cloudpickle 3 leaves it on the node
    assert with_source_file(remote, str(script)) == (
        f'Traceback (most recent call last):\n  File "{script}", line 4, in f\n    return math.sqrt(x) / 0\n'
        'ZeroDivisionError: float division by zero\n')
    assert with_source_file(remote, None) == remote


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import sheepdog_drmaa

def f(x):
    y = x + 1
    raise ValueError(f"bad {{y}}")

try:
    sheepdog_drmaa.map(f, [1], backend="local", progress=False, store={store!r})
except sheepdog_drmaa.SweepFailed as failed:
    print(failed.failures[0].traceback)
"""


def test_a_failure_in_a_script_names_the_script_and_its_line(tmp_path: pathlib.Path, store: str) -> None:
    script = tmp_path / "my_sweep.py"
    script.write_text(SCRIPT.format(root=ROOT, store=store))
    shown = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120).stdout
    assert f'File "{script}", line 8, in f\n    raise ValueError(f"bad {{y}}")' in shown


def daemonising(x: int) -> int:
    """Prints; task 1 then closes its standard descriptors, as daemonising code does, and returns."""
    print(f"task {x} says hello", flush=True)
    if x == 1:
        for descriptor in (0, 1, 2):
            os.close(descriptor)
    return x * 10


def test_a_task_that_closes_its_standard_descriptors_reports_and_the_next_tasks_print(store: str) -> None:
    results = sheepdog_drmaa.map(daemonising, range(4), backend="local", store=store, progress=False, workers=1,
                                 tasks_per_worker=4, retries=0, name="daemon")
    assert results == [0, 10, 20, 30]
    sweep = sheepdog_drmaa.Sweep.open("daemon", store=store)
    attempts = [sweep.attempts(x) for x in range(4)]
    assert [len(each) for each in attempts] == [1, 1, 1, 1]
    assert len({each[0].worker for each in attempts}) == 1  # one worker ran them all, one after the other
    assert [each[0].stdout for each in attempts] == [f"task {x} says hello\n" for x in range(4)]


CONNECT_WITHOUT_STANDARD_DESCRIPTORS = """
import os, socket, sys
sys.path.insert(0, {root!r})
from sheepdog_drmaa.worker.channel import _Connection
server = socket.create_server(("127.0.0.1", 0))
report = os.open({report!r}, os.O_WRONLY | os.O_CREAT)
for descriptor in (0, 1, 2):
    os.close(descriptor)
connection = _Connection("127.0.0.1", server.getsockname()[1], timeout=10)
connection.connect()
connection.sock.sendall(b"through")
received = server.accept()[0].recv(100)
closed = []
for descriptor in (0, 1, 2):
    try:
        os.fstat(descriptor)
    except OSError:
        closed.append(descriptor)
os.write(report, repr((connection.sock.fileno(), connection.sock.gettimeout(), received, closed)).encode())
"""


def test_the_workers_connections_stay_off_the_standard_descriptors_a_task_closed(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "report"
    subprocess.run([sys.executable, "-c", CONNECT_WITHOUT_STANDARD_DESCRIPTORS.format(root=ROOT, report=str(report))],
                   check=True, timeout=60)
    descriptor, timeout, received, closed = ast.literal_eval(report.read_text())
    assert descriptor > 2 and timeout == 10 and received == b"through" and closed == [0, 1, 2]
