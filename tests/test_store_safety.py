"""Nothing lost: results the store cannot hold, a store locked or broken, half-made sweeps, racing
clients, results that cannot be loaded, and who may read what the store keeps."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from helpers import BackendName, wait_until

import sheepdog_drmaa
from sheepdog_drmaa import ConfigurationError, StoreError, SweepFailed, SweepIncomplete, TaskFailure
from sheepdog_drmaa import store as store_module
from sheepdog_drmaa.claims import for_this_process
from sheepdog_drmaa.model import Claim, NewSweep
from sheepdog_drmaa.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__)))


def run(f: Callable[..., Any], args: Iterable[Any], backend: str = "local", **options: Any) -> list[Any]:
    options.setdefault("progress", False)
    results: list[Any] = sheepdog_drmaa.map(f, args, backend=backend, **options)
    return results


# -- 1. a result the store cannot save is a failure that says so, never None --------------------

def big_or_small(n: int) -> bytes:
    return b"x" * n


def test_a_result_over_max_result_size_fails_that_task_naming_the_option(backend: BackendName, store: str) -> None:
    results = run(big_or_small, [10, 100_000, 20], backend=backend, store=store, max_result_size="10K",
                  errors="return")
    assert results[0] == b"x" * 10 and results[2] == b"x" * 20
    failure = results[1]
    assert isinstance(failure, TaskFailure) and failure.cause == "exception" and failure.attempts == 1
    assert "ResultTooLarge" in failure.summary and "max_result_size=10,240" in failure.summary
    assert "100,0" in failure.summary  # the size it had


def wait_for_go(directory: str, n: int) -> bytes:
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.05)
    return b"y" * n


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3.Connection.setlimit is new in Python 3.11")
def test_a_result_sqlite_refuses_fails_that_task_and_the_others_are_kept(store: str, tmp_path: pathlib.Path) -> None:
    sweep = sheepdog_drmaa.map_async(wait_for_go, [(str(tmp_path), 10), (str(tmp_path), 50_000)], backend="local",
                                     store=store, progress=False, errors="return")
    with sweep.store.lock:  # the live store now refuses values over 20,000 bytes, as SQLite does over 1e9
        # The constant is new in Python 3.11 (the test is skipped before it); mypy checks as 3.10.
        sweep.store.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)  # type: ignore[attr-defined]
    (tmp_path / "go").write_text("")
    results = sweep.results()
    assert results[0] == b"y" * 10
    assert isinstance(results[1], TaskFailure) and "ResultTooLarge" in results[1].summary
    assert "more than the store can hold" in results[1].summary
    assert [a.cause for a in sweep.attempts(1)] == ["exception"]


class HeldLock:
    """Another process's view of the store: holds its write lock until released."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> HeldLock:
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


def sleep_then(x: int) -> int:
    time.sleep(0.3)
    return x * 3


def test_a_store_locked_for_a_while_is_waited_for_and_every_result_is_right(store: str) -> None:
    Store(store).close()
    with HeldLock(store) as held:
        timer = threading.Timer(3.0, lambda: held.db.execute("ROLLBACK"))
        timer.start()
        results = run(sleep_then, range(6), store=store, workers=2)
        held.db.execute("BEGIN IMMEDIATE")  # for __exit__ to roll back
    timer.join()
    assert results == [x * 3 for x in range(6)]


def held_until_locked(locked: str, x: int) -> int:
    """A task that ends only once the store is locked, so that its result meets the lock."""
    deadline = time.monotonic() + 60
    while not os.path.exists(locked) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x * 3


def test_a_store_locked_too_long_ends_the_sweep_with_a_clear_error_and_no_made_up_result(
        store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setattr(store_module, "BUSY_SECONDS", 1.0)
    go = threading.Event()
    locked = tmp_path / "locked"

    def lock_when_started() -> None:
        wait_until(lambda: _running_attempts(store) > 0, 60, "a task to start")
        with HeldLock(store):
            locked.touch()
            go.wait(30)
    locker = threading.Thread(target=lock_when_started)
    locker.start()
    try:
        with pytest.raises(StoreError, match="stayed locked by another process for 1 s"):
            run(held_until_locked, [(str(locked), x) for x in range(4)], store=store, name="locked", workers=2)
    finally:
        go.set()
        locker.join()
    reopened = sheepdog_drmaa.Sweep.open("locked", store=store)
    with pytest.raises(SweepIncomplete, match="neither done nor failed.*run the same map"):
        reopened.results()
    monkeypatch.setattr(store_module, "BUSY_SECONDS", 60.0)
    assert run(held_until_locked, [(str(locked), x) for x in range(4)], store=store, name="locked",
               workers=2) == [0, 3, 6, 9]


def _running_attempts(path: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            count: int = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
            return count
    except sqlite3.Error:
        return 0


# -- 2. a half-created sweep is never taken for a finished one ----------------------------------

def new_sweep(n: int, name: str = "half") -> NewSweep:
    return NewSweep(id=f"id-{name}", name=name, function=b"f", function_digest="d", args_digest="a", n_tasks=n,
                    options={})


def test_a_creation_interrupted_midway_leaves_nothing(store: str) -> None:
    database = Store(store)

    def arguments() -> Iterator[bytes]:
        for index in range(50_000):
            if index == 20_000:
                raise KeyboardInterrupt
            yield b"arg"
    with pytest.raises(KeyboardInterrupt):
        database.create_sweep(new_sweep(50_000), arguments(), for_this_process())
    assert database.sweep_named("half") is None
    assert database.stored_task_count("id-half") == 0


def test_a_sweep_left_half_made_by_the_first_release_is_made_again(store: str) -> None:
    database = Store(store)
    database.create_sweep(new_sweep(100), [b"arg"] * 100, for_this_process())
    database.db.execute("DELETE FROM tasks WHERE idx >= 10")
    database.db.execute("UPDATE sweeps SET state = 'creating', owner_pid = NULL, owner_token = NULL")
    database.db.commit()
    assert run(abs, [-x for x in range(100)], store=store, name="half") == list(range(100))


def test_a_stored_task_count_that_differs_is_a_mismatch(store: str) -> None:
    run(abs, [-1, -2, -3], store=store, name="short")
    database = Store(store)
    database.db.execute("DELETE FROM tasks WHERE idx = 2")
    database.db.commit()
    with pytest.raises(sheepdog_drmaa.SweepMismatch, match="3 tasks"):
        run(abs, [-1, -2, -3], store=store, name="short")


CREATOR = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa
    sheepdog_drmaa.map(abs, range({n}), backend="local", store={store!r}, name="big", progress=False)
""")


def test_a_client_killed_while_storing_300000_tasks_leaves_a_sweep_that_is_not_finished(store: str,
                                                                                        tmp_path: pathlib.Path) -> None:
    script = tmp_path / "creator.py"
    script.write_text(CREATOR.format(root=ROOT, store=store, n=300_000))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wal = store + "-wal"
    wait_until(lambda: os.path.exists(wal) and os.path.getsize(wal) > 2_000_000, 120, "the tasks to be written")
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=30)
    database = Store(store, readonly=True)
    record = database.sweep_named("big")
    # Either nothing is stored, or the whole sweep is: never a part of it.
    assert record is None or database.stored_task_count(record.id) == record.n_tasks == 300_000
    sweep = sheepdog_drmaa.map_async(abs, range(300_000), backend="local", store=store, name="big",
                                     progress=False, workers=1)
    try:
        counts = sweep.status()
        assert sum(counts.values()) == 300_000 and counts["done"] < 300_000
    finally:
        sweep.cancel()
    with pytest.raises(sheepdog_drmaa.SweepCancelled):
        sweep.results()
    with pytest.raises(SweepIncomplete, match="neither done nor failed"):
        sheepdog_drmaa.Sweep.open("big", store=store).results()


# -- 3. two clients starting the same named sweep: one runs it, the other is told who ----------

RACER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa

    def count(directory, x):
        with open(os.path.join(directory, f"{{x}}.runs"), "a") as handle:
            handle.write("run\\n")
        time.sleep(1.5)
        return x + 1

    while not os.path.exists({go!r}):
        time.sleep(0.001)
    try:
        print("RESULTS", sheepdog_drmaa.map(count, [({directory!r}, x) for x in range(3)], backend="local",
                                            store={store!r}, name="raced", progress=False))
    except sheepdog_drmaa.SweepLocked as error:
        print("LOCKED", error)
""")


def test_two_clients_starting_one_named_sweep_at_once_never_both_run_it(tmp_path: pathlib.Path) -> None:
    clients: list[tuple[pathlib.Path, subprocess.Popen[str]]] = []
    for trial in range(6):
        directory = tmp_path / f"trial{trial}"
        directory.mkdir()
        script = directory / "racer.py"
        script.write_text(RACER.format(root=ROOT, go=str(tmp_path / "go"), directory=str(directory),
                                       store=str(directory / "sweeps.sqlite")))
        clients += [(directory, subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True)) for _ in range(2)]
    time.sleep(1.0)  # let every client start up and spin on the go file; the race itself is not timed
    (tmp_path / "go").write_text("")
    outcomes: dict[pathlib.Path, list[tuple[int, str]]] = {}
    for directory, client in clients:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        outcomes.setdefault(directory, []).append((client.pid, out.strip()))
    for directory, pair in outcomes.items():
        results = [out for _, out in pair if out.startswith("RESULTS")]
        assert results and all(out == "RESULTS [1, 2, 3]" for out in results), pair
        for pid, out in pair:
            if out.startswith("LOCKED"):
                winner = next(p for p, o in pair if p != pid)
                assert f"process {winner} on {socket.gethostname()}" in out, pair
        for x in range(3):
            assert len((directory / f"{x}.runs").read_text().splitlines()) == 1, f"task {x} ran twice: {pair}"


# -- 4. a result that cannot be loaded here is that task's failure, the others are returned -----

def node_variable(name: str) -> str:
    return os.environ[name]


class NodeOnly:
    """Loads only where SHEEPDOG_TEST_NODE_ONLY is set: on the workers, not in the client."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (node_variable, ("SHEEPDOG_TEST_NODE_ONLY",))


def only_loads_on_the_node(x: int) -> NodeOnly | int:
    return NodeOnly() if x == 1 else x * 10


def test_an_unloadable_result_is_reported_and_every_other_result_returned(backend: BackendName, store: str) -> None:
    options: dict[str, Any] = dict(backend=backend, store=store, name="unloadable",
                                   env={"SHEEPDOG_TEST_NODE_ONLY": "here"})
    with pytest.raises(SweepFailed) as caught:
        run(only_loads_on_the_node, range(3), **options)
    assert caught.value.results[0] == 0 and caught.value.results[2] == 20
    failure = caught.value.failures[0]
    assert failure.index == 1 and failure.cause == "unloadable"
    assert "KeyError" in failure.summary and "SHEEPDOG_TEST_NODE_ONLY" in failure.traceback
    returned = sheepdog_drmaa.Sweep.open("unloadable", store=store)
    returned.errors = "return"
    values = returned.results()
    assert values[0] == 0 and values[2] == 20 and values[1].cause == "unloadable"
    printed = cli_run(store, "results", "unloadable")
    assert printed.returncode == 1
    assert [json.loads(line)["result"] for line in printed.stdout.splitlines()] == [0, 20]
    assert "task 1: its result is stored but cannot be unpickled here" in printed.stderr


# -- 8. what the library creates is its owner's alone ------------------------------------------

def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
                          capture_output=True, text=True)


def test_store_wal_keys_and_logs_are_private_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    shared = tempfile.mkdtemp(prefix="sheepdog-shared-")
    os.chmod(shared, 0o755)
    with open(os.path.join(shared, "public.txt"), "w") as public:
        public.write("anyone")
    os.chmod(os.path.join(shared, "public.txt"), 0o644)
    previous = os.umask(0)
    try:
        store = os.path.join(shared, ".sheepdog", "sweeps.sqlite")
        sweep = sheepdog_drmaa.map_async(str, ["secret-argument"], backend="local", store=store, progress=False)
        assert sweep.results() == ["secret-argument"]
        base = os.path.dirname(store)
        created = [store, store + "-wal", store + "-shm"]
        for path in created:
            assert os.stat(path).st_mode & 0o777 == 0o600, path
        for directory in (base, os.path.join(base, "keys"), os.path.join(base, "logs"),
                          os.path.join(base, "logs", sweep.id)):
            assert os.stat(directory).st_mode & 0o777 == 0o700, directory
        logs = [os.path.join(base, "logs", sweep.id, name) for name in os.listdir(os.path.join(base, "logs", sweep.id))]
        assert logs
        assert as_nobody("cat", os.path.join(shared, "public.txt")).stdout == "anyone"  # the check can succeed
        for path in created + logs:
            reading = as_nobody("cat", path)
            assert reading.returncode != 0 and "Permission denied" in reading.stderr, path
        assert "secret-argument" not in as_nobody("grep", "-r", "secret", shared).stdout
    finally:
        os.umask(previous)
        subprocess.run(["rm", "-rf", shared])


# -- 9. cancel never signals a process that merely reuses the client's pid ----------------------

def test_cancel_leaves_alone_a_process_that_reuses_the_recorded_pid(store: str) -> None:
    run(abs, [-1], store=store, name="old")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        database = Store(store)
        record = database.sweep_named("old")
        assert record is not None
        database.take_claim(record, Claim(pid=stranger.pid, host=socket.gethostname(), started="1", token="t",
                                          seen=time.time()))
        started = time.monotonic()
        result = cli_run(store, "cancel", "old")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 30
        assert stranger.poll() is None, "cancel signalled an unrelated process"
        reread = Store(store, readonly=True).sweep_named("old")
        assert reread is not None and reread.owner is None
    finally:
        stranger.kill()
        stranger.wait()


# -- 10. the command line on stores that are missing, broken or not its own ---------------------

AS_NOBODY = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import sheepdog_drmaa.cli  # everything a read needs is imported before the privileges go
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    sys.exit(sheepdog_drmaa.cli.main(sys.argv[1:]))
""")


def cli_run(store: str, *args: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """The command line on ``store``; with ``nobody``, as that user (this interpreter is root's alone,
    so the program drops its privileges itself once it is loaded)."""
    if nobody:
        command = [sys.executable, "-c", AS_NOBODY.format(root=ROOT), *args, "--store", store]
    else:
        command = [sys.executable, "-m", "sheepdog_drmaa", *args, "--store", store]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")


COMMANDS = [("list",), ("status", "s"), ("failures", "s"), ("results", "s"), ("cancel", "s")]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "directory", "text"])
def test_every_command_on_a_broken_store_says_so_in_one_line(store: str, tmp_path: pathlib.Path,
                                                              damage: str) -> None:
    run(abs, [-1, -2], store=store, name="s")
    broken = str(tmp_path / "broken.sqlite")
    if damage == "garbage":
        (tmp_path / "broken.sqlite").write_bytes(os.urandom(8192))
    elif damage == "truncated":
        (tmp_path / "broken.sqlite").write_bytes((tmp_path / "store" / "sweeps.sqlite").read_bytes()[:1500])
    elif damage == "directory":
        os.mkdir(broken)
    else:
        (tmp_path / "broken.sqlite").write_text("name,value\nx,1\n")
    for command in COMMANDS:
        result = cli_run(broken, *command)
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and broken in lines[0] and "Traceback" not in result.stderr, (command, result.stderr)


def test_commands_on_a_missing_store_create_nothing(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nowhere" / "sweeps.sqlite")
    for command in COMMANDS:
        result = cli_run(missing, *command)
        assert result.returncode == 2 and "no sweep store at" in result.stderr, (command, result.stderr)
    assert not os.path.exists(os.path.dirname(missing))


def test_a_read_only_copy_can_be_read_and_another_users_store_is_a_clear_error(store: str) -> None:
    run(abs, [-1, -2], store=store, name="s")
    assert not os.path.exists(store + "-wal")  # map() closed the store: the file alone is the whole of it
    shared = tempfile.mkdtemp(prefix="sheepdog-copy-")
    try:
        os.chmod(shared, 0o755)
        copy = os.path.join(shared, "copy.sqlite")
        subprocess.run(["cp", store, copy], check=True)
        os.chmod(copy, 0o644)  # readable, not writable, by nobody; nor is the directory
        for command, expected in ((("status", "s"), "done 2"), (("list",), "s "), (("results", "s"), '"result": 2')):
            result = cli_run(copy, *command, nobody=True)
            assert result.returncode == 0 and expected in result.stdout, (command, result.stderr)
        assert sorted(os.listdir(shared)) == ["copy.sqlite"]  # nothing written beside it
        os.chmod(copy, 0o600)
        result = cli_run(copy, "status", "s", nobody=True)
        assert result.returncode == 2 and "permission denied" in result.stderr and copy in result.stderr
    finally:
        subprocess.run(["rm", "-rf", shared])


# -- 12. arguments that cannot travel are named -------------------------------------------------

def test_a_too_deeply_nested_argument_is_a_clear_error(store: str) -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ConfigurationError, match=r"args\[1\] = .* is nested too deeply"):
        run(len, [[1], nested], store=store)


def test_a_second_store_opened_in_a_process_keeps_the_first_ones_locks(store: str) -> None:
    """Opening the store again in this process must not drop the locks of the connection already
    open: else another process, closing last as it thinks, deletes the WAL under it."""
    first = Store(store)
    first.create_sweep(new_sweep(2, "kept"), [b"a", b"b"], for_this_process())
    Store(store).close()  # a second Store of the same file, in this same process
    other = subprocess.run([sys.executable, "-c", "import sys; from sheepdog_drmaa.store import Store; "
                            "Store(sys.argv[1]).close()", store], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent.parent)})
    assert other.returncode == 0, other.stderr
    assert os.path.exists(store + "-wal")  # the other process saw this one's connection: it did not clean up
    assert [record.name for record in first.sweeps()] == ["kept"]
    first.close()
