"""A sweep's tasks as they run: their rows written at creation (large arguments in a table of their
own), the attempts leased and ended, and the workers that held them."""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import AttemptEnd, Cause, Lease, TaskState
from .connection import Database

# Arguments larger than this go to their own table, written and read in chunks (see _write_large).
LARGE_VALUE_BYTES = 1 << 20
LARGE_VALUE_CHUNK = 1 << 20
# A new sweep's tasks are inserted this many to a statement: one multi-row VALUES costs a third of
# the rows' executemany. 100 rows bind 400 parameters, within the 999 of SQLite before 3.32. Plain
# "?" placeholders: Python 3.12.0-3.12.3 warn when numbered ones are bound from a sequence.
INSERT_ROWS = 100


def _insert_tasks(rows: int) -> str:
    """The statement inserting ``rows`` pending tasks, each bound as (sweep id, index, args, large id).

    The state is written into the statement, not bound: a million-task sweep then binds a million
    values fewer."""
    values = ",".join([f"(?,?,?,'{TaskState.PENDING.value}',?)"] * rows)
    return f"INSERT INTO tasks (sweep_id, idx, args, state, args_large) VALUES {values}"


_INSERT_TASKS = _insert_tasks(INSERT_ROWS)
# Tasks whose outcomes one query reads (``TaskRows.outcomes``): 501 parameters, within SQLite's old 999.
OUTCOME_ROWS = 500


def insert_tasks(db: sqlite3.Connection, sweep_id: str, args: Iterable[bytes]) -> int:
    """Insert a new sweep's tasks, pending, from their pickled arguments; how many there were."""
    count = 0
    rows: list[Any] = []
    for count, blob in enumerate(args, start=1):
        if len(blob) > LARGE_VALUE_BYTES:
            rows += (sweep_id, count - 1, b"", _write_large(db, blob))
        else:
            rows += (sweep_id, count - 1, blob, None)
        if count % INSERT_ROWS == 0:
            db.execute(_INSERT_TASKS, rows)
            rows = []
    if count % INSERT_ROWS:
        db.execute(_insert_tasks(count % INSERT_ROWS), rows)
    return count


def _write_large(db: sqlite3.Connection, blob: bytes) -> int:
    """Store one large value in a row of its own. Through SQLite's blob I/O, which (unlike binding it)
    makes no copy of it; before Python 3.11, which lacks blob I/O, by binding it."""
    if sys.version_info < (3, 11):
        row = db.execute("INSERT INTO large_values (data) VALUES (?)", (blob,)).lastrowid
        assert row is not None
        return row
    row = db.execute("INSERT INTO large_values (data) VALUES (zeroblob(?))", (len(blob),)).lastrowid
    assert row is not None
    view = memoryview(blob)
    with db.blobopen("large_values", "data", row) as handle:
        for start in range(0, len(view), LARGE_VALUE_CHUNK):
            handle.write(view[start:start + LARGE_VALUE_CHUNK])
    return row


def read_args(db: sqlite3.Connection, sweep_id: str, index: int) -> bytes:
    """One task's pickled arguments, from its row or the large value it points to."""
    row = db.execute("SELECT args, args_large FROM tasks WHERE sweep_id = ? AND idx = ?",
                     (sweep_id, index)).fetchone()
    if row["args_large"] is None:
        return bytes(row["args"])
    if sys.version_info < (3, 11):
        return bytes(db.execute("SELECT data FROM large_values WHERE id = ?", (row["args_large"],)).fetchone()[0])
    with db.blobopen("large_values", "data", row["args_large"], readonly=True) as handle:
        return handle.read()


class TaskRows(Database):
    """What a running sweep writes: leases, attempt ends, workers; and what a resumed one reads back."""

    def add_tasks(self, sweep_id: str, first: int, args: Sequence[bytes], digests: Sequence[str]) -> None:
        """Tasks ``first``, ``first + 1`` ... joining a live sweep (an Executor's submissions), pending,
        each with the digest of its call, in one transaction with the sweep's new task count."""
        with self._writing() as db:
            rows = []
            for index, (blob, digest) in enumerate(zip(args, digests), start=first):
                large = _write_large(db, blob) if len(blob) > LARGE_VALUE_BYTES else None
                rows.append((sweep_id, index, b"" if large else blob, large, digest))
            db.executemany(f"INSERT INTO tasks (sweep_id, idx, args, state, args_large, digest) "
                           f"VALUES (?,?,?,'{TaskState.PENDING.value}',?,?)", rows)
            db.execute("UPDATE sweeps SET n_tasks = ?, updated = ? WHERE id = ?",
                       (first + len(rows), time.time(), sweep_id))

    def withdraw_tasks(self, sweep_id: str, indices: Iterable[int]) -> None:
        """Tasks not done that are not to run after all (their futures were cancelled, or an earlier
        run of a reopened Executor left them)."""
        with self._writing() as db:
            db.executemany(f"UPDATE tasks SET state = '{TaskState.CANCELLED.value}' WHERE sweep_id = ? AND idx = ? "
                           f"AND state IN ('{TaskState.PENDING.value}', '{TaskState.RUNNING.value}')",
                           [(sweep_id, index) for index in indices])

    def done_by_digest(self, sweep_id: str) -> dict[str, int]:
        """The done tasks that carry a call's digest, by that digest (the last of equal ones)."""
        with self._reading() as db:
            rows = db.execute(f"SELECT digest, idx FROM tasks WHERE sweep_id = ? AND digest IS NOT NULL "
                              f"AND state = '{TaskState.DONE.value}' ORDER BY idx", (sweep_id,)).fetchall()
        return {row["digest"]: row["idx"] for row in rows}

    def outcomes(self, sweep_id: str, indices: Sequence[int]) -> dict[int, tuple[bytes | None, bytes | None]]:
        """(pickled result, pickled exception) of each of these tasks, by index: an Executor's
        resolver reads those that ended together at once, not one read (and lock) each."""
        found: dict[int, tuple[bytes | None, bytes | None]] = {}
        for start in range(0, len(indices), OUTCOME_ROWS):
            chunk = indices[start:start + OUTCOME_ROWS]
            with self._reading() as db:
                rows = db.execute(f"SELECT idx, result, error FROM tasks WHERE sweep_id = ? AND idx IN "
                                  f"({','.join('?' * len(chunk))})", (sweep_id, *chunk)).fetchall()
            found.update((row["idx"], (row["result"], row["error"])) for row in rows)
        return found

    def attempts_made(self, sweep_id: str) -> dict[int, int]:
        """How many attempts each unfinished task has had, for those that had any (a resumed sweep)."""
        with self._reading() as db:
            rows = db.execute("SELECT idx, attempts FROM tasks WHERE sweep_id = ? AND state != ? "
                              "AND attempts > 0", (sweep_id, TaskState.DONE.value)).fetchall()
        return {row["idx"]: row["attempts"] for row in rows}

    def record_leases(self, sweep_id: str, leases: Sequence[Lease]) -> list[bytes]:
        """Open these attempts and mark their tasks running, in one transaction; return each task's arguments."""
        with self._writing() as db:
            db.executemany("INSERT OR REPLACE INTO attempts (sweep_id, task, number, worker, host, started) "
                           "VALUES (?,?,?,?,?,?)",
                           [(sweep_id, lease.task, lease.number, lease.worker, lease.host, lease.started)
                            for lease in leases])
            db.executemany("UPDATE tasks SET state = ?, attempts = ? WHERE sweep_id = ? AND idx = ?",
                           [(TaskState.RUNNING.value, lease.number, sweep_id, lease.task) for lease in leases])
            return [read_args(db, sweep_id, lease.task) for lease in leases]

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

    def add_to_lost_summaries(self, sweep_id: str, worker: str, words: str) -> None:
        """Add ``words`` to the summary of every attempt of ``worker`` that ended lost: what the
        scheduler said of its job once the sweep had given up on it."""
        with self._writing() as db:
            rows = db.execute("SELECT task, number, detail FROM attempts WHERE sweep_id = ? AND worker = ? "
                              "AND cause = ?", (sweep_id, worker, Cause.LOST.value)).fetchall()
            updated = []
            for task, number, text in rows:
                detail = json.loads(text or "{}")
                detail["summary"] = f"{detail.get('summary') or 'lost'}; {words}"
                updated.append((json.dumps(detail), sweep_id, task, number))
            db.executemany("UPDATE attempts SET detail = ? WHERE sweep_id = ? AND task = ? AND number = ?", updated)

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
