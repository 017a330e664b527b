"""``Sweep``: the user's handle on a sweep, live in this process or reopened from the store."""
from __future__ import annotations

import html
import json
import os
import pickle
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from . import claims, control
from .errors import SweepFailed, SweepIncomplete
from .model import AttemptRecord, SweepPhase, SweepRecord, TaskState, counts_by_name
from .options import DASHBOARD_ANNOUNCEMENT, DEFAULT_STORE
from .progress import Progress
from .records import UNLOADABLE, TaskFailure, failure_from_store, render_failures, unloadable_failure
from .runner import Run
from .store import Store

FOLLOW_SECONDS = 0.5  # how often a sweep driven by another process is read again from the store


class Sweep:
    """A sweep's results, progress and failures; ``cancel()`` stops a live one."""

    def __init__(self, store: Store, record: SweepRecord, run: Run | None = None, errors: str = "raise") -> None:
        self.store, self.record, self.run, self.errors = store, record, run, errors
        self._streamed = False

    @classmethod
    def open(cls, name: str, store: str = DEFAULT_STORE) -> Sweep:
        """Reopen a stored sweep read-only (from any process) by its name or id."""
        database = Store(store, readonly=True)
        record = database.sweep_named(name) or database.sweep(name)
        if record is None:
            names = ", ".join(r.name or r.id for r in database.sweeps()) or "none"
            database.close()
            raise KeyError(f"no sweep named {name!r} in {store} (stored: {names})")
        return cls(database, record)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str | None:
        return self.record.name

    def __len__(self) -> int:
        return self.record.n_tasks

    def __repr__(self) -> str:
        return f"<Sweep {self.name or self.id} {self.status()}>"

    def _repr_html_(self) -> str:
        """A notebook's view: the sweep's state and counts, and a link to its page on the store's
        live dashboard when one runs (``sheepdog-drmaa dashboard``)."""
        counts = self.status()
        record = self.store.sweep(self.id) or self.record
        state = SweepPhase.INTERRUPTED.value if claims.driver_gone(record) else record.state
        cells = "".join(f"<td>{html.escape(str(value))}</td>" for value in (
            self.name or self.id, state, len(self), *counts.values()))
        heads = "".join(f"<th>{name}</th>" for name in ("sweep", "state", "tasks", *counts))
        url = _dashboard_link(self.store.path, self.id)
        link = f'<p><a href="{html.escape(url)}" target="_blank">open it on the dashboard</a></p>' if url else ""
        return f"<table><tr>{heads}</tr><tr>{cells}</tr></table>{link}"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the sweep ends (or ``timeout`` seconds pass); True if it ended. A sweep driven
        by another process is followed in the store until it ends, or nobody drives it any more."""
        if self.run is not None:
            return self.run.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended():
            left = FOLLOW_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(FOLLOW_SECONDS, left))
        return True

    def watch(self, progress: bool | None = None) -> None:
        """Show the progress display (``progress``: as the option of that name) until the sweep ends.
        Ctrl-C (KeyboardInterrupt) stops watching; a sweep driven elsewhere goes on."""
        bar = Progress(len(self), progress, self.name or self.id)
        try:
            while not self.wait(FOLLOW_SECONDS):
                bar.update(self.status())
            bar.update(self.status())
        finally:
            bar.close()

    def _ended(self) -> bool:
        self.record = self.store.sweep(self.id) or self.record
        return claims.has_ended(self.record)

    def _wait_or_raise(self, timeout: float | None) -> None:
        if not self.wait(timeout):
            raise self._timed_out(timeout)

    def _timed_out(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"sweep {self.name or self.id} has not ended within {timeout or 0:g} s; it goes on "
                            f"({self.status()}); ask again, or wait without a timeout")

    def results(self, timeout: float | None = None) -> list[Any]:
        """All results in input order, once the sweep ends (waiting at most ``timeout`` seconds, else
        TimeoutError); raises SweepFailed if tasks failed.

        Every task is accounted for: a result, or its failure (also when its stored result cannot
        be unpickled here). A task that is neither done nor failed raises SweepIncomplete.
        """
        self._wait_or_raise(timeout)
        if self.run is not None and self.run.error is not None:
            raise self.run.error
        failures = {f.index: f for f in self.failures()}
        results: list[Any] = []
        unfinished: list[int] = []
        for index, state, blob in self.store.results(self.id):
            if state == TaskState.FAILED:
                results.append(failures[index])
            elif state == TaskState.DONE and blob is not None:
                value = self._value(index, blob)
                if isinstance(value, TaskFailure) and value.cause == UNLOADABLE:
                    failures[index] = value
                results.append(value)
            else:
                unfinished.append(index)
        if unfinished or len(results) != self.record.n_tasks:
            raise SweepIncomplete(self._incomplete_message(unfinished, len(results)))
        if failures and self.errors == "raise":
            ordered = [failures[i] for i in sorted(failures)]
            partial = [None if isinstance(r, TaskFailure) else r for r in results]
            raise SweepFailed(render_failures(ordered, self.record.n_tasks), ordered, partial)
        return results

    def _incomplete_message(self, unfinished: list[int], accounted: int) -> str:
        label = self.name or self.id
        shown = ", ".join(str(i) for i in unfinished[:10]) + (" ..." if len(unfinished) > 10 else "")
        what = (f"{len(unfinished)} of {self.record.n_tasks} tasks of sweep {label} are neither done nor failed "
                f"(tasks {shown})" if unfinished else
                f"only {accounted} of the {self.record.n_tasks} tasks of sweep {label} are in the store")
        state = (self.store.sweep(self.id) or self.record).state
        again = ("run the same map() call again to finish them: done tasks are kept" if self.name else
                 "this sweep has no name= and cannot be resumed; run it again")
        return f"{what}; the sweep is {state}. No result is made up for them: {again}."

    def as_completed(self, timeout: float | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` as tasks finish; a failed task yields its TaskFailure. A sweep
        driven by another process is followed in the store; TimeoutError if it has not ended within
        ``timeout`` seconds.

        The live stream of a running sweep can be read once; later calls read the store.
        """
        if self.run is not None and not self._streamed:
            self._streamed = True
            yield from self._streamed_live(self.run, timeout)
        elif self.run is None and not self._ended():
            yield from self._followed(timeout)
        else:
            for index, state, blob in self.store.results(self.id):
                if state in (TaskState.DONE, TaskState.FAILED):
                    yield index, self._value(index, blob)

    def _streamed_live(self, run: Run, timeout: float | None) -> Iterator[tuple[int, Any]]:
        try:
            for index in run.completions(None if timeout is None else time.monotonic() + timeout):
                yield index, self._value(index, self.store.result(self.id, index)[0])
        except TimeoutError:
            raise self._timed_out(timeout) from None

    def _followed(self, timeout: float | None) -> Iterator[tuple[int, Any]]:
        """The tasks of a sweep driven elsewhere, each once, as the store shows them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        told = bytearray(self.record.n_tasks)
        while True:
            ended = self._ended()  # read first: every task that ended before it is in the read below
            finished = self.store.tasks_in_state(self.id, TaskState.DONE.value)
            finished += self.store.tasks_in_state(self.id, TaskState.FAILED.value)
            for index in sorted(finished):
                if not told[index]:
                    told[index] = 1
                    yield index, self._value(index, self.store.result(self.id, index)[0])
            if ended:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timed_out(timeout)
            time.sleep(FOLLOW_SECONDS)

    def _value(self, index: int, blob: bytes | None) -> Any:
        """The result, or the task's failure: failed on the cluster, or a result that cannot be loaded here."""
        if blob is None:
            return failure_from_store(self.store, self.id, index)
        try:
            return pickle.loads(blob)
        except Exception as error:
            return unloadable_failure(self.store, self.id, index, error)

    def status(self) -> dict[str, int]:
        """Task counts per state: done, failed, running, queued."""
        if self.run is not None and not self.run.wait(0):
            return self.run.counts()
        return counts_by_name(self.store.counts(self.id))

    def attempts(self, index: int | None = None) -> list[AttemptRecord]:
        """Every recorded attempt (of one task, or of all), with its cause, worker and details."""
        return self.store.attempts(self.id, index)

    def failures(self) -> list[TaskFailure]:
        """One record per task that failed for good, with its whole attempt history."""
        return [failure_from_store(self.store, self.id, index)
                for index in self.store.tasks_in_state(self.id, TaskState.FAILED.value)]

    def cancel(self, timeout: float = 60.0) -> None:
        """Terminate every job of the sweep and wait until they are gone (bounded by ``timeout``). A
        sweep driven by another process is stopped as ``sheepdog-drmaa cancel`` stops it."""
        if self.run is not None:
            self.run.cancel(timeout)
            return
        store = Store(self.store.path)
        try:
            record = store.sweep(self.id) or self.record
            control.cancel(store, record, timeout)
            self.record = store.sweep(self.id) or record
        finally:
            store.close()


def _dashboard_link(store_path: str, sweep_id: str) -> str | None:
    """The sweep's page on the live dashboard of this store, if one runs (with the token it asks for)."""
    path = os.path.join(os.path.dirname(os.path.abspath(store_path)), DASHBOARD_ANNOUNCEMENT)
    try:
        with open(path) as handle:
            announced = json.load(handle)
        os.kill(int(announced["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    parts = urllib.parse.urlsplit(str(announced["url"]))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/sweep/{sweep_id}", parts.query, ""))
