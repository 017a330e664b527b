"""The store's tables, and bringing a store written by an earlier version up to them.

States are stored as the text of their enums (model.TaskState, model.SweepPhase); the tables give
no state a default, so no state is spelt here.
"""
from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3
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
    owner_token TEXT,
    launch TEXT
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
    digest TEXT,
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
    "sweeps": (("owner_started", "TEXT"), ("owner_token", "TEXT"), ("launch", "TEXT")),
    "tasks": (("args_large", "INTEGER"), ("digest", "TEXT")),
    "attempts": (("stdout", "TEXT"), ("stderr", "TEXT")),
}


def create_or_upgrade(db: sqlite3.Connection) -> None:
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
        # A named Executor finds the calls it already ran by their digest.
        db.execute("CREATE INDEX IF NOT EXISTS tasks_by_digest ON tasks (sweep_id, digest) WHERE digest IS NOT NULL")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
