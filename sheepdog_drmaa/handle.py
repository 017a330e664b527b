"""``Sweep``: the user's handle on a sweep, live in this process or reopened from the store."""
from __future__ import annotations

import pickle
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import SweepFailed
from .options import DEFAULT_STORE
from .records import TaskFailure, failure_from_store, render_failures
from .runner import Run
from .store import AttemptRecord, Store, SweepRecord


class Sweep:
    """A sweep's results, progress and failures; ``cancel()`` stops a live one."""

    def __init__(self, store: Store, record: SweepRecord, run: Optional[Run] = None, errors: str = "raise") -> None:
        self.store, self.record, self.run, self.errors = store, record, run, errors
        self._thread: Optional[threading.Thread] = None
        self._streamed = False

    @classmethod
    def open(cls, name: str, store: str = DEFAULT_STORE) -> "Sweep":
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
    def name(self) -> Optional[str]:
        return self.record.name

    def __len__(self) -> int:
        return self.record.n_tasks

    def __repr__(self) -> str:
        return f"<Sweep {self.name or self.id} {self.status()}>"

    def _start_in_background(self) -> None:
        assert self.run is not None
        self._thread = threading.Thread(target=self._drive_quietly, name=f"sheepdog-{self.id}", daemon=True)
        self._thread.start()

    def _drive_quietly(self) -> None:
        try:
            self.run.drive()
        except BaseException:
            pass  # kept in run.outcome and raised from results()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the sweep ends (or ``timeout`` seconds pass); True if it ended."""
        if self.run is None:
            return True
        return self.run.finished.wait(timeout)

    def results(self) -> List[Any]:
        """All results in input order, once the sweep ends; raises SweepFailed if tasks failed."""
        self.wait()
        if self.run is not None and self.run.outcome is not None:
            raise self.run.outcome
        failures = {f.index: f for f in self.failures()}
        results: List[Any] = []
        for index, _, blob in self.store.results(self.id):
            results.append(failures.get(index) if blob is None else pickle.loads(blob))
        if failures and self.errors == "raise":
            ordered = [failures[i] for i in sorted(failures)]
            partial = [None if isinstance(r, TaskFailure) else r for r in results]
            raise SweepFailed(render_failures(ordered, self.record.n_tasks), ordered, partial)
        return results

    def as_completed(self) -> Iterator[Tuple[int, Any]]:
        """Yield ``(index, result)`` as tasks finish; a failed task yields its TaskFailure.

        The live stream of a running sweep can be read once; later calls read the store.
        """
        if self.run is None or self._streamed:
            for index, state, blob in self.store.results(self.id):
                if state in ("done", "failed"):
                    yield index, self._value(index, blob)
            return
        self._streamed = True
        while True:
            index = self.run.completed.get()
            if index is None:
                return
            yield index, self._value(index, self.store.result(self.id, index)[0])

    def _value(self, index: int, blob: Optional[bytes]) -> Any:
        return pickle.loads(blob) if blob is not None else failure_from_store(self.store, self.id, index)

    def status(self) -> Dict[str, int]:
        """Task counts per state: done, failed, running, queued."""
        if self.run is not None and not self.run.finished.is_set():
            with self.run.lock:
                return self.run.state.counts()
        counts = self.store.counts(self.id)
        return {"done": counts.get("done", 0), "failed": counts.get("failed", 0),
                "running": counts.get("running", 0), "queued": counts.get("pending", 0)}

    def attempts(self, index: Optional[int] = None) -> List[AttemptRecord]:
        """Every recorded attempt (of one task, or of all), with its cause, worker and details."""
        return self.store.attempts(self.id, index)

    def failures(self) -> List[TaskFailure]:
        """One record per task that failed for good, with its whole attempt history."""
        return [failure_from_store(self.store, self.id, index)
                for index, state, _ in self.store.task_states(self.id) if state == "failed"]

    def cancel(self, timeout: float = 60.0) -> None:
        """Terminate every job of a live sweep and wait until they are gone (bounded by ``timeout``)."""
        if self.run is None:
            raise RuntimeError("this Sweep was opened read-only; cancel it from its own process "
                               "or with `sheepdog-drmaa cancel NAME`")
        self.run.cancel_requested.set()
        self.run.finished.wait(timeout)
