"""A scheduler's answers to the commands that describe it (``qconf -sq``, ``sinfo`` ...): asked
several at a time, and remembered for a few minutes, in this process and in a small file beside the
sweep store, so that a sweep does not wait on the scheduler to check its request at every start.

Remembered answers may be stale, so they may only let a request through: a check that would refuse
one on remembered answers asks again (:meth:`Answers.forget_older_than`) before refusing. The file
is private to its owner (0600), and anything wrong with it (missing, damaged, old, another user's)
makes it ignored, never an error. A command that failed is remembered as failed in this process
only, and for a few seconds (within one check it is not asked again; a later sweep asks again).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

log = logging.getLogger(__name__)

REMEMBER_SECONDS = 300.0
REMEMBER_FAILED_SECONDS = 10.0
PARALLEL_COMMANDS = 8  # commands of one round run at once, at most
FILE_NAME = "site-answers.json"
_FILE_VERSION = 1
_LARGEST_FILE = 16 << 20  # bytes: a larger file is not read (a site of thousands of hosts stays well below)

Command = tuple[str, ...]
_file: contextvars.ContextVar[str | None] = contextvars.ContextVar("sheepdog_site_answers", default=None)


@contextlib.contextmanager
def remembered_in(path: str | None) -> Iterator[None]:
    """Within this block, site checks run in this context also remember their answers in the file ``path``."""
    token = _file.set(path)
    try:
        yield
    finally:
        _file.reset(token)


class Answers:
    """One scheduler's answers, each with when it was read. ``key`` names the scheduler: the submit host
    and which cell or cluster (clusters that share a home directory share the file).

    ``run`` asks the scheduler: a command's output, or None when it failed.
    """

    def __init__(self, key: str, run: Callable[[Command], str | None], clock: Callable[[], float] = time.time) -> None:
        self.key, self._run, self._clock = key, run, clock
        self._lock = threading.Lock()
        self._answers: dict[Command, tuple[float, str | None]] = {}
        self._files_read: set[str] = set()
        self._file_lock = threading.Lock()  # one thread reads the file; the others wait for its answers

    def read(self, *command: str) -> str | None:
        """A command's output (None when it failed), remembered if fresh, else asked now."""
        self.fetch(command)
        with self._lock:
            entry = self._answers.get(command)
        return entry[1] if entry is not None else self._run(command)  # forgotten meanwhile by another check

    def fetch(self, *commands: Command) -> None:
        """Ask, all at once, each of ``commands`` that has no fresh answer yet."""
        path = _file.get()
        if path is not None:
            with self._file_lock:
                if path not in self._files_read:
                    self._files_read.add(path)
                    self._take(_load(path, self.key))
        now = self._clock()
        with self._lock:
            missing = [c for c in dict.fromkeys(commands) if not self._fresh(c, now)]
        if not missing:
            return
        if len(missing) == 1:
            outputs = [self._run(missing[0])]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(len(missing), PARALLEL_COMMANDS)) as pool:
                outputs = list(pool.map(self._run, missing))
        read = self._clock()
        with self._lock:
            self._answers.update((command, (read, output)) for command, output in zip(missing, outputs))
        if path is not None and any(output is not None for output in outputs):
            self._save(path)

    def now(self) -> float:
        return self._clock()

    def forget_older_than(self, moment: float) -> bool:
        """Drop the answers read before ``moment``; whether there were any."""
        with self._lock:
            old = [command for command, (read, _) in self._answers.items() if read < moment]
            for command in old:
                del self._answers[command]
        return bool(old)

    def _fresh(self, command: Command, now: float) -> bool:
        entry = self._answers.get(command)
        limit = REMEMBER_SECONDS if entry is not None and entry[1] is not None else REMEMBER_FAILED_SECONDS
        return entry is not None and 0 <= now - entry[0] < limit

    def _take(self, remembered: dict[Command, tuple[float, str]]) -> None:
        """Adopt answers read from the file where they are newer than this process's."""
        with self._lock:
            for command, (read, output) in remembered.items():
                if command not in self._answers or self._answers[command][0] < read:
                    self._answers[command] = (read, output)

    def _save(self, path: str) -> None:
        """Write this scheduler's successful fresh answers into the file, beside other schedulers' (best effort)."""
        now = self._clock()
        with self._lock:
            mine = [[list(command), read, output] for command, (read, output) in self._answers.items()
                    if output is not None and 0 <= now - read < REMEMBER_SECONDS]
        sites = _read_file(path).get("sites", {})
        sites = {key: entries for key, entries in sites.items() if key != self.key and isinstance(entries, list)}
        sites[self.key] = mine
        try:
            _write_private(path, json.dumps({"version": _FILE_VERSION, "sites": sites}))
        except OSError as error:
            log.debug("cannot remember the site's answers in %s: %s", path, error)


def _load(path: str, key: str) -> dict[Command, tuple[float, str]]:
    """The answers the file holds for ``key``; {} for anything unexpected in it."""
    entries = _read_file(path).get("sites", {}).get(key, [])
    found: dict[Command, tuple[float, str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list)
                and all(isinstance(word, str) for word in entry[0]) and isinstance(entry[1], (int, float))
                and isinstance(entry[2], str)):
            found[tuple(entry[0])] = (float(entry[1]), entry[2])
    return found


def _read_file(path: str) -> dict[str, Any]:
    """The file's content if it is this user's own private file of this version; else {}."""
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            if (status.st_uid != os.getuid() or status.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
                    or status.st_size > _LARGEST_FILE):
                log.debug("not using %s: not a private file of this user's, or too large", path)
                return {}
            content = json.loads(handle.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.debug("not using %s: %s", path, error)
        return {}
    if not isinstance(content, dict) or content.get("version") != _FILE_VERSION or not isinstance(
            content.get("sites"), dict):
        return {}
    return content


def _write_private(path: str, text: str) -> None:
    """Replace the file at once (readers never see half of it), readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".site-answers-")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
