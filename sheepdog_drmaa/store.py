"""Durable record of sweeps, tasks, attempts and results in one SQLite file (WAL mode).

The only module that imports sqlite3. Results are committed as they arrive, so a client that
dies loses nothing finished. A sweep and all its tasks are created in one transaction, together
with the claim of the client that runs it: a sweep is either whole in the store or absent.
The file, its WAL and its directory are readable by their owner only. One connection per
Store; its lock serialises callers.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .errors import ConfigurationError, StoreError, StoreTooLarge
from .model import AttemptEnd, AttemptRecord, Claim, Lease, NewSweep, SweepPhase, SweepRecord

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    n_tasks INTEGER NOT NULL,
    state TEXT NOT NULL,
    function BLOB NOT NULL,
    function_digest TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    options TEXT NOT NULL,
    owner_pid INTEGER,
    owner_host TEXT,
    owner_seen REAL,
    owner_started TEXT,
    owner_token TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    sweep_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    args BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error BLOB,
    args_large INTEGER,
    PRIMARY KEY (sweep_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS large_values (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    sweep_id TEXT NOT NULL,
    task INTEGER NOT NULL,
    number INTEGER NOT NULL,
    worker TEXT NOT NULL,
    host TEXT,
    started REAL NOT NULL,
    ended REAL,
    cause TEXT,
    detail TEXT,
    stdout TEXT,
    stderr TEXT,
    PRIMARY KEY (sweep_id, task, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    sweep_id TEXT NOT NULL,
    id TEXT NOT NULL,
    submitted REAL NOT NULL,
    ended REAL,
    host TEXT,
    process_group INTEGER,
    PRIMARY KEY (sweep_id, id)
) WITHOUT ROWID;
"""

# Columns added since the first release, by table: added on open to stores written by it.
_ADDED_COLUMNS = {
    "workers": (("host", "TEXT"), ("process_group", "INTEGER")),
    "sweeps": (("owner_started", "TEXT"), ("owner_token", "TEXT")),
    "tasks": (("args_large", "INTEGER"),),
    "attempts": (("stdout", "TEXT"), ("stderr", "TEXT")),
}

# How long a write waits for another process's write lock before giving up with a clear error.
BUSY_SECONDS = 60.0
# SQLite refuses a value longer than this (SQLITE_MAX_LENGTH as Debian and Python build it).
MAX_VALUE_BYTES = 1_000_000_000
# Arguments larger than this go to their own table, written and read in chunks (see _write_large).
LARGE_VALUE_BYTES = 1 << 20
LARGE_VALUE_CHUNK = 1 << 20
# A new sweep's tasks are inserted this many to a statement: one multi-row VALUES costs a third of
# the rows' executemany. 100 rows bind 400 parameters, within the 999 of SQLite before 3.32. Plain
# "?" placeholders: Python 3.12.0-3.12.3 warn when numbered ones are bound from a sequence.
INSERT_ROWS = 100


def _insert_tasks(rows: int) -> str:
    """The statement inserting ``rows`` pending tasks, each bound as (sweep id, index, args, large id)."""
    values = ",".join(["(?,?,?,'pending',?)"] * rows)
    return f"INSERT INTO tasks (sweep_id, idx, args, state, args_large) VALUES {values}"


_INSERT_TASKS = _insert_tasks(INSERT_ROWS)


class ClaimLost(Exception):
    """Another client changed the sweep's claim (or took its name) first."""


_SWEEP_COLUMNS = ("id, name, created, updated, n_tasks, state, function_digest, args_digest, options, "
                  "owner_pid, owner_host, owner_seen, owner_started, owner_token")


def _private_directory(path: str) -> None:
    """Create ``path`` (and missing parents) readable by its owner only; existing ones are left alone."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        missing.append(head)
        head = os.path.dirname(head)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)  # whatever the umask


def private_directory(path: str) -> str:
    """``path``, created owner-only if missing (keys and logs of a sweep live in such directories)."""
    _private_directory(path)
    return path


class Store:
    """A SQLite file holding any number of sweeps."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.db = self._open_readonly(path) if readonly else self._open(path)
        # A Store let go without close() (the store of a Sweep handle, say) closes its connection when
        # it is collected: Python 3.13 warns about every sqlite3 connection left open.
        self._close = weakref.finalize(self, self.db.close)
        self._close.atexit = False

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        """Open for reading and writing; the file (owner-only) and its tables are created where missing."""
        db = None
        try:
            _private_directory(os.path.dirname(os.path.abspath(path)))
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite gives -wal and -shm this mode
            db = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_SECONDS)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _create_or_upgrade(db)
            return db
        except (OSError, sqlite3.Error) as error:
            if db is not None:
                db.close()
            raise ConfigurationError(
                f"cannot open the sweep store {path!r} ({_reason(error)}); pass store= (or set SHEEPDOG_STORE) "
                "to a writable path") from error

    @staticmethod
    def _open_readonly(path: str) -> sqlite3.Connection:
        """Open for reading only: nothing is created or written, not even the -shm file where it exists."""
        check_readable(path)
        uri = "file:" + urllib.parse.quote(os.path.abspath(path))
        try:
            return _connect_for_reading(uri + "?mode=ro")
        except sqlite3.OperationalError:
            # A read-only copy in a read-only directory: WAL readers need a -shm file they cannot
            # create. With no -wal left beside it (a cleanly closed store), reading it as an
            # immutable file misses nothing.
            if os.path.exists(path + "-wal") or os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
                raise StoreError(f"cannot read the sweep store {path}: it is being written in a way this "
                                 "process cannot follow; try again, or copy it with its -wal file") from None
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{path} is not a sweep store or is damaged ({error}); pass --store the right "
                             "file, or move this one away") from None
        try:
            return _connect_for_reading(uri + "?immutable=1")
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{path} is not a sweep store or is damaged ({error}); pass --store the right "
                             "file, or move this one away") from None

    def close(self) -> None:
        with self.lock:
            self._close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self.lock, self._translated():
            yield self.db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken with the write lock at once (so a read inside it cannot go stale)."""
        with self.lock, self._translated():
            self.db.execute("BEGIN IMMEDIATE")
            with self.db:
                yield self.db

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """sqlite3's errors, as errors that name the store and say what to do."""
        try:
            yield
        except sqlite3.DataError as error:
            raise StoreTooLarge(f"a value too large for the sweep store {self.path} ({error}; SQLite's limit "
                                f"is {MAX_VALUE_BYTES:,} bytes)") from error
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise StoreError(f"the sweep store {self.path} stayed locked by another process for "
                                 f"{BUSY_SECONDS:g} s; find the process holding it (fuser {self.path}) and "
                                 "run the sweep again (a named sweep resumes)") from error
            raise StoreError(f"the sweep store {self.path} cannot be used: {error}") from error
        except sqlite3.DatabaseError as error:
            raise StoreError(f"the sweep store {self.path} is damaged or not a sweep store ({error})") from error

    # -- sweeps ------------------------------------------------------------------------------

    def create_sweep(self, new: NewSweep, args: Iterable[bytes], owner: Claim,
                     replacing: SweepRecord | None = None) -> None:
        """Store a new sweep, all its tasks and its owner's claim in one transaction.

        ``replacing`` is an earlier sweep of the same name, deleted in the same transaction, but only
        if its claim is still what it was when read. Raises ClaimLost if another client took the
        name or that claim first; nothing is stored then, nor if ``args`` raises (Ctrl-C, say).
        """
        now = time.time()
        with self._writing() as db:
            if replacing is not None:
                self._require_claim(replacing)
                self._delete(replacing.id)
            try:
                db.execute(
                    "INSERT INTO sweeps (id, name, created, updated, n_tasks, state, function, function_digest, "
                    "args_digest, options, owner_pid, owner_host, owner_seen, owner_started, owner_token) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (new.id, new.name, now, now, new.n_tasks, SweepPhase.CREATED.value, new.function,
                     new.function_digest,
                     new.args_digest, json.dumps(new.options), owner.pid, owner.host, now, owner.started,
                     owner.token))
            except sqlite3.IntegrityError as error:
                raise ClaimLost(f"sweep {new.name!r} was just created by another client") from error
            count = 0
            rows: list[Any] = []
            for count, blob in enumerate(args, start=1):
                if len(blob) > LARGE_VALUE_BYTES:
                    rows += (new.id, count - 1, b"", self._write_large(blob))
                else:
                    rows += (new.id, count - 1, blob, None)
                if count % INSERT_ROWS == 0:
                    db.execute(_INSERT_TASKS, rows)
                    rows = []
            if count % INSERT_ROWS:
                db.execute(_insert_tasks(count % INSERT_ROWS), rows)
            if count != new.n_tasks:
                raise ValueError(f"{count} arguments were stored for a sweep of {new.n_tasks} tasks")

    def _write_large(self, blob: bytes) -> int:
        """Store one large value in a row of its own. Through SQLite's blob I/O, which (unlike binding it)
        makes no copy of it; before Python 3.11, which lacks blob I/O, by binding it."""
        if sys.version_info < (3, 11):
            row = self.db.execute("INSERT INTO large_values (data) VALUES (?)", (blob,)).lastrowid
            assert row is not None
            return row
        row = self.db.execute("INSERT INTO large_values (data) VALUES (zeroblob(?))", (len(blob),)).lastrowid
        assert row is not None
        view = memoryview(blob)
        with self.db.blobopen("large_values", "data", row) as handle:
            for start in range(0, len(view), LARGE_VALUE_CHUNK):
                handle.write(view[start:start + LARGE_VALUE_CHUNK])
        return row

    def _require_claim(self, record: SweepRecord) -> None:
        row = self.db.execute("SELECT owner_token, owner_pid FROM sweeps WHERE id = ?", (record.id,)).fetchone()
        expected = (record.owner.token, record.owner.pid) if record.owner else (None, None)
        if row is None or (row["owner_token"], row["owner_pid"]) != expected:
            raise ClaimLost(f"sweep {record.name!r} was claimed by another client")

    def take_claim(self, record: SweepRecord, owner: Claim) -> None:
        """Make ``owner`` the sweep's client, if its claim is still what ``record`` says; else ClaimLost."""
        with self._writing() as db:
            self._require_claim(record)
            db.execute("UPDATE sweeps SET owner_pid = ?, owner_host = ?, owner_seen = ?, owner_started = ?, "
                       "owner_token = ?, updated = ? WHERE id = ?",
                       (owner.pid, owner.host, time.time(), owner.started, owner.token, time.time(), record.id))

    def refresh_claim(self, sweep_id: str, token: str) -> bool:
        """Mark the claim fresh; False if it is no longer ours (another client took over)."""
        with self._writing() as db:
            cursor = db.execute("UPDATE sweeps SET owner_seen = ? WHERE id = ? AND owner_token = ?",
                                (time.time(), sweep_id, token))
            return cursor.rowcount == 1

    def release_claim(self, sweep_id: str, token: str | None, state: SweepPhase | None = None) -> None:
        """Clear the claim if it is still ``token``'s (any claim, with None), setting the sweep's state too."""
        with self._writing() as db:
            match = "" if token is None else " AND owner_token = ?"
            params: tuple[Any, ...] = (sweep_id,) if token is None else (sweep_id, token)
            cursor = db.execute("UPDATE sweeps SET owner_pid = NULL, owner_host = NULL, owner_seen = NULL, "
                                "owner_started = NULL, owner_token = NULL WHERE id = ?" + match, params)
            if state is not None and cursor.rowcount:
                db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ?",
                           (state.value, time.time(), sweep_id))

    def delete_sweep(self, sweep_id: str) -> None:
        with self._writing():
            self._delete(sweep_id)

    def _delete(self, sweep_id: str) -> None:
        self.db.execute("DELETE FROM large_values WHERE id IN (SELECT args_large FROM tasks WHERE sweep_id = ? "
                        "AND args_large IS NOT NULL)", (sweep_id,))
        for table, column in (("attempts", "sweep_id"), ("workers", "sweep_id"), ("tasks", "sweep_id"),
                              ("sweeps", "id")):
            self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (sweep_id,))

    def sweep(self, sweep_id: str) -> SweepRecord | None:
        return self._one_sweep("id = ?", sweep_id)

    def sweep_named(self, name: str) -> SweepRecord | None:
        return self._one_sweep("name = ?", name)

    def _one_sweep(self, where: str, value: str) -> SweepRecord | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE {where}", (value,)).fetchone()
        return _sweep_record(row) if row else None

    def sweeps(self) -> list[SweepRecord]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps ORDER BY created").fetchall()
        return [_sweep_record(row) for row in rows]

    def set_sweep_state(self, sweep_id: str, state: SweepPhase) -> None:
        with self._writing() as db:
            db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ?", (state.value, time.time(), sweep_id))

    # -- tasks -------------------------------------------------------------------------------

    def stored_task_count(self, sweep_id: str) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM tasks WHERE sweep_id = ?", (sweep_id,)).fetchone()[0])

    def attempts_made(self, sweep_id: str) -> dict[int, int]:
        """How many attempts each unfinished task has had, for those that had any (a resumed sweep)."""
        with self._reading() as db:
            rows = db.execute("SELECT idx, attempts FROM tasks WHERE sweep_id = ? AND state != 'done' "
                              "AND attempts > 0", (sweep_id,)).fetchall()
        return {row["idx"]: row["attempts"] for row in rows}

    def task_args(self, sweep_id: str, index: int) -> bytes:
        with self._reading() as db:
            return self._args(db, sweep_id, index)

    @staticmethod
    def _args(db: sqlite3.Connection, sweep_id: str, index: int) -> bytes:
        row = db.execute("SELECT args, args_large FROM tasks WHERE sweep_id = ? AND idx = ?",
                         (sweep_id, index)).fetchone()
        if row["args_large"] is None:
            return bytes(row["args"])
        if sys.version_info < (3, 11):
            return bytes(db.execute("SELECT data FROM large_values WHERE id = ?", (row["args_large"],)).fetchone()[0])
        with db.blobopen("large_values", "data", row["args_large"], readonly=True) as handle:
            return handle.read()

    def tasks_in_state(self, sweep_id: str, state: str) -> list[int]:
        """The indices of the tasks in ``state``, in order."""
        with self._reading() as db:
            rows = db.execute("SELECT idx FROM tasks WHERE sweep_id = ? AND state = ? ORDER BY idx",
                              (sweep_id, state)).fetchall()
        return [row[0] for row in rows]

    def results(self, sweep_id: str) -> Iterator[tuple[int, str, bytes | None]]:
        """(index, state, pickled result or None) in index order, read in pages to bound memory."""
        last = -1
        while True:
            with self._reading() as db:
                rows = db.execute(
                    "SELECT idx, state, result FROM tasks WHERE sweep_id = ? AND idx > ? ORDER BY idx LIMIT 2000",
                    (sweep_id, last)).fetchall()
            if not rows:
                return
            for row in rows:
                yield row["idx"], row["state"], row["result"]
            last = rows[-1]["idx"]

    def result(self, sweep_id: str, index: int) -> tuple[bytes | None, bytes | None]:
        """(pickled result, pickled exception) of one task; either may be None."""
        with self._reading() as db:
            row = db.execute("SELECT result, error FROM tasks WHERE sweep_id = ? AND idx = ?",
                             (sweep_id, index)).fetchone()
        return row["result"], row["error"]

    def counts(self, sweep_id: str) -> dict[str, int]:
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM tasks WHERE sweep_id = ? GROUP BY state",
                              (sweep_id,)).fetchall()
        return {row["state"]: row["n"] for row in rows}

    # -- attempts ------------------------------------------------------------------------------

    def record_leases(self, sweep_id: str, leases: Sequence[Lease]) -> list[bytes]:
        """Open these attempts and mark their tasks running, in one transaction; return each task's arguments."""
        with self._writing() as db:
            db.executemany("INSERT OR REPLACE INTO attempts (sweep_id, task, number, worker, host, started) "
                           "VALUES (?,?,?,?,?,?)",
                           [(sweep_id, lease.task, lease.number, lease.worker, lease.host, lease.started)
                            for lease in leases])
            db.executemany("UPDATE tasks SET state = 'running', attempts = ? WHERE sweep_id = ? AND idx = ?",
                           [(lease.number, sweep_id, lease.task) for lease in leases])
            return [self._args(db, sweep_id, lease.task) for lease in leases]

    def record_ends(self, sweep_id: str, ends: Sequence[AttemptEnd], worker_ended: str | None = None) -> None:
        """Close attempts and set their tasks' states (and results, or pickled exceptions) in one
        transaction, with the ending of the worker that held them when that is what closed them.

        Raises StoreTooLarge, with nothing written, for a result SQLite cannot hold.
        """
        with self._writing() as db:
            if worker_ended is not None:
                db.execute("UPDATE workers SET ended = ? WHERE sweep_id = ? AND id = ?",
                           (time.time(), sweep_id, worker_ended))
            db.executemany("UPDATE attempts SET ended = ?, cause = ?, detail = ?, stdout = ?, stderr = ? "
                           "WHERE sweep_id = ? AND task = ? AND number = ?",
                           [(end.ended, end.cause, json.dumps(end.detail, default=repr), end.output.get("stdout"),
                             end.output.get("stderr"), sweep_id, end.task, end.number) for end in ends])
            db.executemany("UPDATE tasks SET state = ?, result = ?, error = ? WHERE sweep_id = ? AND idx = ?",
                           [(end.task_state, end.result, end.error, sweep_id, end.task) for end in ends])

    def attempts(self, sweep_id: str, task: int | None = None) -> list[AttemptRecord]:
        query = ("SELECT task, number, worker, host, started, ended, cause, detail, stdout, stderr FROM attempts "
                 "WHERE sweep_id = ?")
        params: tuple[Any, ...] = (sweep_id,)
        if task is not None:
            query += " AND task = ?"
            params += (task,)
        with self._reading() as db:
            rows = db.execute(query + " ORDER BY task, number", params).fetchall()
        return [AttemptRecord(task=r["task"], number=r["number"], worker=r["worker"], host=r["host"],
                              started=r["started"], ended=r["ended"], cause=r["cause"],
                              detail=json.loads(r["detail"]) if r["detail"] else {},
                              stdout=r["stdout"] or "", stderr=r["stderr"] or "") for r in rows]

    # -- workers ------------------------------------------------------------------------------

    def record_workers(self, sweep_id: str, ids: Iterable[str]) -> None:
        now = time.time()
        with self._writing() as db:
            db.executemany("INSERT OR IGNORE INTO workers (sweep_id, id, submitted) VALUES (?,?,?)",
                           ((sweep_id, worker, now) for worker in ids))

    def record_workers_ended(self, sweep_id: str, ids: Iterable[str]) -> None:
        now = time.time()
        with self._writing() as db:
            db.executemany("UPDATE workers SET ended = ? WHERE sweep_id = ? AND id = ?",
                           ((now, sweep_id, worker) for worker in ids))

    def record_worker_process(self, sweep_id: str, worker: str, host: str | None,
                              process_group: int | None) -> None:
        """Where a worker runs, so that a later client can stop it if this one dies."""
        with self._writing() as db:
            db.execute("UPDATE workers SET host = ?, process_group = ? WHERE sweep_id = ? AND id = ?",
                       (host, process_group, sweep_id, worker))

    def live_workers(self, sweep_id: str) -> list[tuple[str, str | None, int | None]]:
        """(id, host, process group) of the workers submitted and not known to have ended."""
        with self._reading() as db:
            rows = db.execute("SELECT id, host, process_group FROM workers WHERE sweep_id = ? AND ended IS NULL",
                              (sweep_id,)).fetchall()
        return [(row["id"], row["host"], row["process_group"]) for row in rows]


def _create_or_upgrade(db: sqlite3.Connection) -> None:
    """Create the tables, or bring a store written by an earlier version up to this schema."""
    with db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer sheepdog_drmaa (schema {version}); upgrade this one")
        if version == SCHEMA_VERSION:
            return
        db.executescript(SCHEMA)
        for table, added in _ADDED_COLUMNS.items():
            present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in added:
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _connect_for_reading(uri: str) -> sqlite3.Connection:
    """A connection to ``uri`` that could read the sweeps table; closed again if it could not."""
    db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_SECONDS)
    try:
        db.row_factory = sqlite3.Row
        db.execute("SELECT 1 FROM sweeps LIMIT 1").fetchall()
        return db
    except BaseException:
        db.close()
        raise


def check_readable(path: str) -> None:
    """Raise StoreError, saying why, if ``path`` is missing, a directory, or closed to this user (a
    directory on the way that it cannot enter is not "missing")."""
    try:
        is_directory = stat.S_ISDIR(os.stat(path).st_mode)
    except PermissionError:
        raise StoreError(f"cannot read the sweep store {path}: permission denied ({_closed_directory(path)}); "
                         "run this as its owner") from None
    except OSError:
        raise StoreError(f"no sweep store at {path}; pass --store (or set SHEEPDOG_STORE) to its path") from None
    if is_directory:
        raise StoreError(f"{path} is a directory, not a sweep store; pass --store the .sqlite file in it")
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read the sweep store {path}: permission denied (it belongs to uid "
                         f"{os.stat(path).st_uid}); run this as its owner")


def _closed_directory(path: str) -> str:
    """Which directory on the way to ``path`` this user cannot enter, and whose it is."""
    directory = os.path.dirname(os.path.abspath(path))
    ancestors = [directory]
    while directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
        ancestors.append(directory)
    for directory in reversed(ancestors):
        if not os.access(directory, os.X_OK):
            return f"this user cannot enter {directory}, which belongs to uid {os.stat(directory).st_uid}"
    return "a directory on its path cannot be entered"


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _sweep_record(row: sqlite3.Row) -> SweepRecord:
    owner = None
    if row["owner_pid"] is not None:
        owner = Claim(pid=row["owner_pid"], host=row["owner_host"] or "", started=row["owner_started"],
                      token=row["owner_token"], seen=row["owner_seen"] or 0.0)
    return SweepRecord(id=row["id"], name=row["name"], created=row["created"], updated=row["updated"],
                       n_tasks=row["n_tasks"], state=row["state"], function_digest=row["function_digest"],
                       args_digest=row["args_digest"], options=json.loads(row["options"]), owner=owner)
