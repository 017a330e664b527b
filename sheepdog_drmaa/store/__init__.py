"""Durable record of sweeps, tasks, attempts and results in one SQLite file (WAL mode).

The only package that imports sqlite3. Results are committed as they arrive, so a client that
dies loses nothing finished. A sweep and all its tasks are created in one transaction, together
with the claim of the client that runs it: a sweep is either whole in the store or absent.
The file, its WAL and its directory are readable by their owner only. One connection per
Store; its lock serialises callers.

    schema.py      the tables, and the upgrade of stores written by earlier versions
    connection.py  opening the file (read-write or read-only), transactions, errors that say what to do
    sweeps.py      sweeps and the claims of the clients that run them
    tasks.py       tasks as they run: created, leased, ended, and the workers that held them
    results.py     what views read: states, results, arguments, attempts

Task and sweep states are bound from their enums (model.TaskState, model.SweepPhase).
"""
from __future__ import annotations

from .connection import MAX_VALUE_BYTES, check_readable, private_directory
from .results import ResultRows
from .schema import SCHEMA, SCHEMA_VERSION
from .sweeps import ClaimLost, SweepRows
from .tasks import INSERT_ROWS, LARGE_VALUE_BYTES, LARGE_VALUE_CHUNK, TaskRows

__all__ = ["BUSY_SECONDS", "INSERT_ROWS", "LARGE_VALUE_BYTES", "LARGE_VALUE_CHUNK", "MAX_VALUE_BYTES", "SCHEMA",
           "SCHEMA_VERSION", "ClaimLost", "Store", "check_readable", "private_directory"]

# How long a write waits for another process's write lock before giving up with a clear error.
BUSY_SECONDS = 60.0


class Store(SweepRows, TaskRows, ResultRows):
    """A SQLite file holding any number of sweeps."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        super().__init__(path, readonly, busy_seconds=BUSY_SECONDS)
