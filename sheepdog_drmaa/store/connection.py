"""The store's one SQLite connection: opening it (read-write or read-only), its lock, its
transactions, and sqlite3's errors turned into errors that name the store and say what to do."""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
import urllib.parse
import weakref
from collections.abc import Iterator

from ..errors import ConfigurationError, StoreError, StoreTooLarge
from .schema import create_or_upgrade

# SQLite refuses a value longer than this (SQLITE_MAX_LENGTH as Debian and Python build it).
MAX_VALUE_BYTES = 1_000_000_000


class Database:
    """One connection to a store file; its lock serialises callers."""

    def __init__(self, path: str, readonly: bool, busy_seconds: float) -> None:
        """``busy_seconds``: how long a write waits for another process's write lock before giving up."""
        self.path = path
        self.busy_seconds = busy_seconds
        self.lock = threading.RLock()
        self.db = self._open_readonly(path) if readonly else self._open(path)
        # A Store let go without close() (the store of a Sweep handle, say) closes its connection when
        # it is collected: Python 3.13 warns about every sqlite3 connection left open.
        self._close = weakref.finalize(self, self.db.close)
        self._close.atexit = False

    def _open(self, path: str) -> sqlite3.Connection:
        """Open for reading and writing; the file (owner-only) and its tables are created where missing."""
        db = None
        try:
            _private_directory(os.path.dirname(os.path.abspath(path)))
            _create_private(path)
            db = sqlite3.connect(path, check_same_thread=False, timeout=self.busy_seconds)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            create_or_upgrade(db)
            return db
        except (OSError, sqlite3.Error) as error:
            if db is not None:
                db.close()
            raise ConfigurationError(
                f"cannot open the sweep store {path!r} ({_reason(error)}); pass store= (or set SHEEPDOG_STORE) "
                "to a writable path") from error

    def _open_readonly(self, path: str) -> sqlite3.Connection:
        """Open for reading only: nothing is created or written, not even the -shm file where it exists."""
        check_readable(path)
        uri = "file:" + urllib.parse.quote(os.path.abspath(path))
        try:
            return self._connect_for_reading(uri + "?mode=ro")
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
            return self._connect_for_reading(uri + "?immutable=1")
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{path} is not a sweep store or is damaged ({error}); pass --store the right "
                             "file, or move this one away") from None

    def _connect_for_reading(self, uri: str) -> sqlite3.Connection:
        """A connection to ``uri`` that could read the sweeps table; closed again if it could not."""
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=self.busy_seconds)
        try:
            db.row_factory = sqlite3.Row
            db.execute("SELECT 1 FROM sweeps LIMIT 1").fetchall()
            return db
        except BaseException:
            db.close()
            raise

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
                                 f"{self.busy_seconds:g} s; find the process holding it (fuser {self.path}) and "
                                 "run the sweep again (a named sweep resumes)") from error
            raise StoreError(f"the sweep store {self.path} cannot be used: {error}") from error
        except sqlite3.DatabaseError as error:
            raise StoreError(f"the sweep store {self.path} is damaged or not a sweep store ({error})") from error


def _create_private(path: str) -> None:
    """Create the store file owner-only if it is missing (SQLite gives -wal and -shm its mode), or
    check that this user may write it. An existing file is never opened and closed here: closing
    any descriptor of it drops every POSIX lock this process holds on it, those of the other
    connections of this process included, and another process closing its last connection would
    then take itself for the last and delete the WAL under them ("disk I/O error")."""
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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
