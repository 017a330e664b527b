"""What a sweep's views read: its tasks' states, results and arguments, and every attempt."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..model import AttemptRecord
from .connection import Database
from .tasks import read_args

# Results are read this many tasks at a time, to bound memory.
RESULT_PAGE = 2000


class ResultRows(Database):
    """Reading tasks and attempts."""

    def stored_task_count(self, sweep_id: str) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM tasks WHERE sweep_id = ?", (sweep_id,)).fetchone()[0])

    def task_args(self, sweep_id: str, index: int) -> bytes:
        with self._reading() as db:
            return read_args(db, sweep_id, index)

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
                    "SELECT idx, state, result FROM tasks WHERE sweep_id = ? AND idx > ? ORDER BY idx LIMIT ?",
                    (sweep_id, last, RESULT_PAGE)).fetchall()
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
