"""Sweeps and the claims of the clients that run them: created whole with their tasks, read, handed
over, deleted."""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ..model import Claim, Launch, NewSweep, SweepPhase, SweepRecord
from .connection import Database
from .tasks import insert_tasks


class ClaimLost(Exception):
    """Another client changed the sweep's claim (or took its name) first."""


_SWEEP_COLUMNS = ("id, name, created, updated, n_tasks, state, function_digest, args_digest, options, "
                  "owner_pid, owner_host, owner_seen, owner_started, owner_token")


class SweepRows(Database):
    """Sweeps and their claims."""

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
                _delete(db, replacing.id)
            try:
                db.execute(
                    "INSERT INTO sweeps (id, name, created, updated, n_tasks, state, function, function_digest, "
                    "args_digest, options, owner_pid, owner_host, owner_seen, owner_started, owner_token, launch) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (new.id, new.name, now, now, new.n_tasks, SweepPhase.CREATED.value, new.function,
                     new.function_digest,
                     new.args_digest, json.dumps(new.options), owner.pid, owner.host, now, owner.started,
                     owner.token, new.launch and new.launch.to_json()))
            except sqlite3.IntegrityError as error:
                raise ClaimLost(f"sweep {new.name!r} was just created by another client") from error
            count = insert_tasks(db, new.id, args)
            if count != new.n_tasks:
                raise ValueError(f"{count} arguments were stored for a sweep of {new.n_tasks} tasks")

    def _require_claim(self, record: SweepRecord) -> None:
        row = self.db.execute("SELECT owner_token, owner_pid FROM sweeps WHERE id = ?", (record.id,)).fetchone()
        expected = (record.owner.token, record.owner.pid) if record.owner else (None, None)
        if row is None or (row["owner_token"], row["owner_pid"]) != expected:
            raise ClaimLost(f"sweep {record.name!r} was claimed by another client")

    def take_claim(self, record: SweepRecord, owner: Claim, launch: Launch | None = None) -> None:
        """Make ``owner`` the sweep's client, if its claim is still what ``record`` says; else ClaimLost.
        A ``launch`` given replaces the stored one (a sweep resumed by a new call runs with its options)."""
        with self._writing() as db:
            self._require_claim(record)
            db.execute("UPDATE sweeps SET owner_pid = ?, owner_host = ?, owner_seen = ?, owner_started = ?, "
                       "owner_token = ?, updated = ? WHERE id = ?",
                       (owner.pid, owner.host, time.time(), owner.started, owner.token, time.time(), record.id))
            if launch is not None:
                db.execute("UPDATE sweeps SET launch = ? WHERE id = ?", (launch.to_json(), record.id))

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
        with self._writing() as db:
            _delete(db, sweep_id)

    def function(self, sweep_id: str) -> bytes:
        """The sweep's pickled function (with its extra globals), as its workers receive it."""
        with self._reading() as db:
            row = db.execute("SELECT function FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            raise KeyError(f"no sweep {sweep_id!r} in {self.path}")
        return bytes(row["function"])

    def sweep(self, sweep_id: str) -> SweepRecord | None:
        return self._one_sweep("id = ?", sweep_id)

    def sweep_named(self, name: str) -> SweepRecord | None:
        return self._one_sweep("name = ?", name)

    def _one_sweep(self, where: str, value: str) -> SweepRecord | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {self._columns()} FROM sweeps WHERE {where}", (value,)).fetchone()
        return _sweep_record(row) if row else None

    def _columns(self) -> str:
        """The columns a record is read from. A store of schema 2 opened read-only (so not upgraded)
        has no launch column: its sweeps read as having none."""
        present = {row["name"] for row in self.db.execute("PRAGMA table_info(sweeps)")}
        return _SWEEP_COLUMNS + (", launch" if "launch" in present else ", NULL AS launch")

    def sweeps(self) -> list[SweepRecord]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {self._columns()} FROM sweeps ORDER BY created").fetchall()
        return [_sweep_record(row) for row in rows]

    def set_sweep_state(self, sweep_id: str, state: SweepPhase, token: str | None = None) -> bool:
        """Set the sweep's state; with ``token``, only while that claim holds it (else False: a
        cancel, say, came first)."""
        with self._writing() as db:
            if token is None:
                cursor = db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ?",
                                    (state.value, time.time(), sweep_id))
            else:
                cursor = db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ? AND owner_token = ?",
                                    (state.value, time.time(), sweep_id, token))
            return cursor.rowcount == 1


def _delete(db: sqlite3.Connection, sweep_id: str) -> None:
    """Every row of a sweep: its large values, attempts, workers, tasks and itself."""
    db.execute("DELETE FROM large_values WHERE id IN (SELECT args_large FROM tasks WHERE sweep_id = ? "
               "AND args_large IS NOT NULL)", (sweep_id,))
    for table, column in (("attempts", "sweep_id"), ("workers", "sweep_id"), ("tasks", "sweep_id"),
                          ("sweeps", "id")):
        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (sweep_id,))


def _sweep_record(row: sqlite3.Row) -> SweepRecord:
    owner = None
    if row["owner_pid"] is not None:
        owner = Claim(pid=row["owner_pid"], host=row["owner_host"] or "", started=row["owner_started"],
                      token=row["owner_token"], seen=row["owner_seen"] or 0.0)
    return SweepRecord(id=row["id"], name=row["name"], created=row["created"], updated=row["updated"],
                       n_tasks=row["n_tasks"], state=row["state"], function_digest=row["function_digest"],
                       args_digest=row["args_digest"], options=json.loads(row["options"]), owner=owner,
                       launch=Launch.from_json(row["launch"]) if row["launch"] else None)
