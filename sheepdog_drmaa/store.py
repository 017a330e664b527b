"""Durable record of sweeps, tasks, attempts and results in one SQLite file (WAL mode).

The only module that imports sqlite3. Results are committed as they arrive, so a client that
dies loses nothing finished. One connection per Store; callers serialise access to it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from .errors import ConfigurationError
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

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
    owner_seen REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    sweep_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    args BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error BLOB,
    PRIMARY KEY (sweep_id, idx)
) WITHOUT ROWID;
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

INSERT_BATCH = 5000


@dataclass(frozen=True)
class SweepRecord:
    id: str
    name: Optional[str]
    created: float
    updated: float
    n_tasks: int
    state: str
    function_digest: str
    args_digest: str
    options: Dict[str, Any]
    owner_pid: Optional[int]
    owner_host: Optional[str]
    owner_seen: Optional[float]


@dataclass(frozen=True)
class AttemptRecord:
    task: int
    number: int
    worker: str
    host: Optional[str]
    started: float
    ended: Optional[float]
    cause: Optional[str]
    detail: Dict[str, Any]


_SWEEP_COLUMNS = ("id, name, created, updated, n_tasks, state, function_digest, args_digest, options, "
                  "owner_pid, owner_host, owner_seen")


class Store:
    """A SQLite file holding any number of sweeps."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not os.path.exists(path):
                raise FileNotFoundError(f"no sweep store at {path}")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        else:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self.db = sqlite3.connect(path, check_same_thread=False, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                self._upgrade()
            except (OSError, sqlite3.Error) as error:
                raise ConfigurationError(
                    f"cannot open the sweep store {path!r} ({error}); pass store= (or set SHEEPDOG_STORE) to a "
                    "writable path") from error
        self.lock = threading.RLock()

    def _upgrade(self) -> None:
        """Bring a store written by an earlier version up to this schema."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(workers)")}
        with self.db:
            for column, kind in (("host", "TEXT"), ("process_group", "INTEGER")):
                if column not in columns:
                    self.db.execute(f"ALTER TABLE workers ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- sweeps ------------------------------------------------------------------------------

    def create_sweep(self, sweep_id: str, name: Optional[str], function: bytes, function_digest: str,
                     args_digest: str, options: Dict[str, Any], args: Iterable[bytes]) -> int:
        """Store a new sweep and its tasks in batched transactions; returns the task count."""
        now = time.time()
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO sweeps (id, name, created, updated, n_tasks, state, function, function_digest, "
                "args_digest, options, owner_pid, owner_host, owner_seen) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (sweep_id, name, now, now, 0, "creating", function, function_digest, args_digest,
                 json.dumps(options), None, None, None))
        count = 0
        batch: List[Tuple[str, int, bytes, str]] = []
        for blob in args:
            batch.append((sweep_id, count, blob, "pending"))
            count += 1
            if len(batch) >= INSERT_BATCH:
                self._insert_tasks(batch)
                batch = []
        self._insert_tasks(batch)
        with self.lock, self.db:
            self.db.execute("UPDATE sweeps SET n_tasks = ?, state = 'created' WHERE id = ?", (count, sweep_id))
        return count

    def _insert_tasks(self, batch: List[Tuple[str, int, bytes, str]]) -> None:
        with self.lock, self.db:
            self.db.executemany("INSERT INTO tasks (sweep_id, idx, args, state) VALUES (?,?,?,?)", batch)

    def delete_sweep(self, sweep_id: str) -> None:
        with self.lock, self.db:
            for table, column in (("attempts", "sweep_id"), ("workers", "sweep_id"), ("tasks", "sweep_id"),
                                  ("sweeps", "id")):
                self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (sweep_id,))

    def sweep(self, sweep_id: str) -> Optional[SweepRecord]:
        return self._one_sweep("id = ?", sweep_id)

    def sweep_named(self, name: str) -> Optional[SweepRecord]:
        return self._one_sweep("name = ?", name)

    def _one_sweep(self, where: str, value: str) -> Optional[SweepRecord]:
        with self.lock:
            row = self.db.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE {where}", (value,)).fetchone()
        return _sweep_record(row) if row else None

    def sweeps(self) -> List[SweepRecord]:
        with self.lock:
            rows = self.db.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps ORDER BY created").fetchall()
        return [_sweep_record(row) for row in rows]

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        with self.lock, self.db:
            self.db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ?", (state, time.time(), sweep_id))

    def claim(self, sweep_id: str, pid: Optional[int], host: Optional[str]) -> None:
        """Record (or clear, with None) the live client that owns the sweep."""
        with self.lock, self.db:
            self.db.execute("UPDATE sweeps SET owner_pid = ?, owner_host = ?, owner_seen = ? WHERE id = ?",
                            (pid, host, time.time() if pid else None, sweep_id))

    # -- tasks -------------------------------------------------------------------------------

    def task_args(self, sweep_id: str, index: int) -> bytes:
        with self.lock:
            return self.db.execute("SELECT args FROM tasks WHERE sweep_id = ? AND idx = ?",
                                   (sweep_id, index)).fetchone()[0]

    def task_states(self, sweep_id: str) -> Iterator[Tuple[int, str, int]]:
        """(index, state, attempts) of every task, in index order."""
        with self.lock:
            rows = self.db.execute("SELECT idx, state, attempts FROM tasks WHERE sweep_id = ? ORDER BY idx",
                                   (sweep_id,)).fetchall()
        return iter(rows)

    def results(self, sweep_id: str) -> Iterator[Tuple[int, str, Optional[bytes]]]:
        """(index, state, pickled result or None) in index order, read in pages to bound memory."""
        last = -1
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT idx, state, result FROM tasks WHERE sweep_id = ? AND idx > ? ORDER BY idx LIMIT 2000",
                    (sweep_id, last)).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def result(self, sweep_id: str, index: int) -> Tuple[Optional[bytes], Optional[bytes]]:
        """(pickled result, pickled exception) of one task; either may be None."""
        with self.lock:
            return self.db.execute("SELECT result, error FROM tasks WHERE sweep_id = ? AND idx = ?",
                                   (sweep_id, index)).fetchone()

    def counts(self, sweep_id: str) -> Dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM tasks WHERE sweep_id = ? GROUP BY state",
                                   (sweep_id,)).fetchall()
        return dict(rows)

    # -- attempts ------------------------------------------------------------------------------

    def record_lease(self, sweep_id: str, task: int, number: int, worker: str, host: Optional[str],
                     started: float) -> None:
        with self.lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO attempts (sweep_id, task, number, worker, host, started) "
                            "VALUES (?,?,?,?,?,?)", (sweep_id, task, number, worker, host, started))
            self.db.execute("UPDATE tasks SET state = 'running', attempts = ? WHERE sweep_id = ? AND idx = ?",
                            (number, sweep_id, task))

    def record_end(self, sweep_id: str, task: int, number: int, cause: str, ended: float,
                   detail: Dict[str, Any], task_state: str, result: Optional[bytes] = None,
                   error: Optional[bytes] = None) -> None:
        """Close an attempt and set its task's state (and result, or pickled exception) in one transaction."""
        with self.lock, self.db:
            self.db.execute("UPDATE attempts SET ended = ?, cause = ?, detail = ? "
                            "WHERE sweep_id = ? AND task = ? AND number = ?",
                            (ended, cause, json.dumps(detail, default=repr), sweep_id, task, number))
            self.db.execute("UPDATE tasks SET state = ?, result = ?, error = ? WHERE sweep_id = ? AND idx = ?",
                            (task_state, result, error, sweep_id, task))

    def attempts(self, sweep_id: str, task: Optional[int] = None) -> List[AttemptRecord]:
        query = ("SELECT task, number, worker, host, started, ended, cause, detail FROM attempts "
                 "WHERE sweep_id = ?")
        params: Tuple[Any, ...] = (sweep_id,)
        if task is not None:
            query += " AND task = ?"
            params += (task,)
        with self.lock:
            rows = self.db.execute(query + " ORDER BY task, number", params).fetchall()
        return [AttemptRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]) if r[7] else {})
                for r in rows]

    # -- workers ------------------------------------------------------------------------------

    def record_workers(self, sweep_id: str, ids: Iterable[str]) -> None:
        now = time.time()
        with self.lock, self.db:
            self.db.executemany("INSERT OR IGNORE INTO workers (sweep_id, id, submitted) VALUES (?,?,?)",
                                ((sweep_id, worker, now) for worker in ids))

    def record_workers_ended(self, sweep_id: str, ids: Iterable[str]) -> None:
        now = time.time()
        with self.lock, self.db:
            self.db.executemany("UPDATE workers SET ended = ? WHERE sweep_id = ? AND id = ?",
                                ((now, sweep_id, worker) for worker in ids))

    def record_worker_process(self, sweep_id: str, worker: str, host: Optional[str],
                              process_group: Optional[int]) -> None:
        """Where a worker runs, so that a later client can stop it if this one dies."""
        with self.lock, self.db:
            self.db.execute("UPDATE workers SET host = ?, process_group = ? WHERE sweep_id = ? AND id = ?",
                            (host, process_group, sweep_id, worker))

    def live_workers(self, sweep_id: str) -> List[Tuple[str, Optional[str], Optional[int]]]:
        """(id, host, process group) of the workers submitted and not known to have ended."""
        with self.lock:
            return self.db.execute("SELECT id, host, process_group FROM workers WHERE sweep_id = ? AND ended IS NULL",
                                   (sweep_id,)).fetchall()


def _sweep_record(row: Tuple[Any, ...]) -> SweepRecord:
    values = list(row)
    values[8] = json.loads(values[8])
    return SweepRecord(*values)
