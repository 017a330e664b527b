"""What the store holds and who may read it: large arguments on every Python (blob I/O exists from 3.11
only), connections closed even when a handle is dropped (3.13 warns of each one left open), and a
store another user cannot reach said to be closed to them, not missing."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import shutil
import sqlite3
import tempfile

import pytest
from test_store_safety import cli_run

import sheepdog_drmaa
from sheepdog_drmaa.store import LARGE_VALUE_BYTES, Store


def length_and_digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def test_large_arguments_round_trip_beside_small_ones(store: str) -> None:
    large = os.urandom(3 * LARGE_VALUE_BYTES + 7)  # several chunks and a partial one
    args = [b"small", large, large[::-1], b""]
    results = sheepdog_drmaa.map(length_and_digest, args, backend="local", store=store, progress=False, name="big")
    assert results == [length_and_digest(value) for value in args]
    with contextlib.closing(sqlite3.connect(store)) as db:  # the two large ones took the large-value path
        assert db.execute("SELECT idx FROM tasks WHERE args_large IS NOT NULL ORDER BY idx").fetchall() == [(1,), (2,)]
        assert db.execute("SELECT COUNT(*) FROM large_values").fetchone() == (2,)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_store_dropped_without_close_closes_its_connection(store: str, readonly: bool) -> None:
    Store(store).close()
    dropped = Store(store, readonly=readonly)
    connection = dropped.db
    del dropped
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the commands as the user nobody, which needs root")
def test_a_store_in_a_directory_another_user_cannot_enter_is_permission_denied(store: str) -> None:
    sheepdog_drmaa.map(abs, [-1], backend="local", store=store, progress=False, name="s")
    shared = tempfile.mkdtemp(prefix="sheepdog-closed-")
    try:
        os.chmod(shared, 0o755)
        closed = os.path.join(shared, "closed")
        os.mkdir(closed, 0o700)  # root's: nobody cannot enter it
        shutil.copy(store, closed)
        inside = os.path.join(closed, os.path.basename(store))
        for command in (("list",), ("status", "s"), ("results", "s")):
            result = cli_run(inside, *command, nobody=True)
            assert result.returncode == 2, (command, result.stderr)
            assert "permission denied" in result.stderr and f"cannot enter {closed}," in result.stderr, result.stderr
            assert "no sweep store" not in result.stderr and inside in result.stderr
        missing = cli_run(os.path.join(shared, "missing.sqlite"), "list", nobody=True)  # where it may look
        assert missing.returncode == 2 and "no sweep store at" in missing.stderr, missing.stderr
    finally:
        shutil.rmtree(shared)
