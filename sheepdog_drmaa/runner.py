"""A running sweep: ties the pure state, the store, the task server and a backend together.

One thread (the caller's, for ``map``) drives the backend: it submits workers, receives their
exit information, terminates overdue or surplus ones, and updates the progress display. The
server's threads handle hellos, leases, reports and heartbeats. Both go through one lock, which
is never held while the scheduler is asked anything (it may take seconds to answer).
"""
from __future__ import annotations

import array
import atexit
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from . import claims, protocol
from .backends import Backend, WorkerSpec
from .driver import Driver, current_timing
from .ledger import Ledger
from .model import Claim, TaskState
from .options import Options
from .progress import Progress
from .routes import Routes
from .server import TaskServer, make_app
from .state import SweepState
from .store import Store

log = logging.getLogger(__name__)


class Completions:
    """Indices of tasks as they end for good, kept compactly (8 bytes each, a million tasks
    included) until read; iterated once, by whoever streams the results, until closed."""

    def __init__(self, already: Iterable[int] = ()) -> None:
        self.indices = array.array("q", already)
        self.closed = False
        self.changed = threading.Condition()

    def add(self, index: int) -> None:
        with self.changed:
            self.indices.append(index)
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def follow(self, deadline: float | None = None) -> Iterator[int]:
        """The indices as they come, until closed; TimeoutError at ``deadline`` (time.monotonic())."""
        for fresh in self.follow_batches(deadline):
            yield from fresh

    def follow_batches(self, deadline: float | None = None) -> Iterator[array.array[int]]:
        """The indices as they come, those that came together at once (never none), until closed."""
        position = 0
        while True:
            with self.changed:
                while position >= len(self.indices) and not self.closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("no task ended before the deadline")
                    self.changed.wait(left)
                fresh, closed = self.indices[position:], self.closed
            if fresh:
                yield fresh
            position += len(fresh)
            if closed and position >= len(self.indices):
                return


class Run:
    """The live side of one sweep in this process."""

    def __init__(self, *, store: Store, sweep_id: str, label: str, n_tasks: int, function: bytes,
                 backend: Backend, spec_without_url: WorkerSpec, key: bytes, key_path: str,
                 host: str, bind: str, port: int, options: Options, done: list[int], claim: Claim,
                 source_file: str | None = None, accepting: bool = False) -> None:
        self.store, self.sweep_id, self.label, self.claim = store, sweep_id, label, claim
        self.source_file = source_file  # where f was defined, to name its frames in remote tracebacks
        self.function, self.backend, self.key_path = function, backend, key_path
        self.options = options
        self.lock = threading.RLock()
        self.state = SweepState(
            n_tasks, retries=options.retries,
            retry_exceptions=options.retry_exceptions,
            tasks_per_worker=options.tasks_per_worker,
            max_workers=options.workers or options.max_workers, timeout=options.timeout,
            heartbeat_timeout=options.heartbeat_timeout, done=done, attempts_made=store.attempts_made(sweep_id),
            walltime=options.runtime_limit(),
            task_time=options.task_time, memory_limit=options.memory, accepting=accepting,
            idle_timeout=options.idle_timeout)
        self.completed = Completions(done)
        self.ledger = Ledger(store, sweep_id, self.state, self.completed.add)
        self.timing = current_timing()  # read in the caller's context: tests set it there
        # A report carries one result (or pickled exception), the output kept (up to 3 bytes a
        # character once decoded, for each of two streams) and its envelope; a request carries
        # the reports gathered below the flush size, and one more.
        max_body = (options.max_result_size + 6 * options.output_limit + protocol.ENVELOPE_BYTES
                    + protocol.REPORT_FLUSH_BYTES)
        self.server = TaskServer(make_app(key, Routes(self).handlers(), max_body=max_body), bind, port)
        self.url = self.server.url_for(host)
        environment = dict(spec_without_url.environment)
        environment[protocol.ENV_URL] = self.url
        environment[protocol.ENV_KEY_FILE] = key_path
        self.spec = dataclasses.replace(spec_without_url, environment=environment)
        self.progress = Progress(n_tasks, options.progress, label)
        self.submitting = False  # a submission is under way, outside the lock
        self.cancel_requested = threading.Event()
        self.cancel_reason: str | None = None
        self.interrupt_reason: str | None = None  # why the client stops driving, if not cancelled
        self.finished = threading.Event()
        self.outcome: BaseException | None = None
        self.fatal: BaseException | None = None  # a store error met by a server thread: ends the sweep

    # -- the interface of the user's Sweep handle ----------------------------------------------

    def start_in_background(self) -> None:
        """Drive the sweep from a thread; its ending is kept in ``error`` and waited for with ``wait``.
        Should the interpreter exit first (the script ended, or raised), the sweep's jobs are removed
        then and it is recorded as interrupted, not left running with nobody to drive it."""
        def drive_quietly() -> None:
            try:
                self.drive()
            except BaseException:
                pass  # kept in self.outcome, raised by the handle's results()
        atexit.register(self.interrupt_at_exit)
        threading.Thread(target=drive_quietly, name=f"sheepdog-{self.sweep_id}", daemon=True).start()

    def interrupt_at_exit(self) -> None:
        """At the interpreter's exit: stop the sweep (its jobs removed, recorded interrupted) and wait
        for that, within as long as a shutdown takes. Not in a child forked from this process: the
        sweep is its parent's."""
        if self.finished.is_set() or os.getpid() != self.claim.pid:
            return
        self.interrupt_reason = (f"the client's interpreter exited while sweep {self.label} ran; its jobs were "
                                 "removed" + (f" (`sheepdog-drmaa resume {self.label}` drives it on, detached; "
                                              "detach=True would have kept it running)"
                                              if isinstance(self.options.backend, str) else ""))
        self.cancel_requested.set()
        if not self.finished.wait(self.timing.reap + 2 * self.options.outage_wait):
            log.error("sweep %s: its jobs could not all be removed before the interpreter exited", self.label)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the sweep ends (or ``timeout`` seconds pass); True if it ended."""
        return self.finished.wait(timeout)

    @property
    def error(self) -> BaseException | None:
        """What ended the sweep early, if anything did (None while it runs and after a whole run)."""
        return self.outcome

    def counts(self) -> dict[str, int]:
        """Tasks per state now: done, failed, running, queued."""
        with self.lock:
            return self.state.counts()

    def completions(self, deadline: float | None = None) -> Iterator[int]:
        """Indices of tasks as they end for good (done or failed), until the sweep ends; readable once.
        TimeoutError at ``deadline`` (time.monotonic()) if the sweep goes on."""
        return self.completed.follow(deadline)

    def completion_batches(self) -> Iterator[array.array[int]]:
        """As :meth:`completions`, those that ended together at once (an Executor settles them in one read)."""
        return self.completed.follow_batches()

    def cancel(self, timeout: float = 60.0) -> bool:
        """Ask the driving thread to stop the sweep and terminate its jobs; True once it has."""
        self.request_cancel()
        return self.finished.wait(timeout)

    def request_cancel(self, reason: str | None = None) -> None:
        """Ask the driving thread to stop the sweep at its next turn, saying ``reason``; returns at once
        (safe in a signal handler: nothing is interrupted midway)."""
        if reason is not None and self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel_requested.set()

    # -- a sweep that grows (an Executor's) ----------------------------------------------------

    def add_tasks(self, args: Sequence[bytes], digests: Sequence[str]) -> range:
        """Tasks joining the live sweep, stored first, then pending; their indices. RuntimeError once
        it no longer accepts tasks."""
        with self.lock:
            if not self.state.accepting or self.finished.is_set():
                raise RuntimeError(f"sweep {self.label} no longer accepts tasks")
            first = self.state.tasks.n_tasks
            self.store.add_tasks(self.sweep_id, first, args, digests)
            added = self.state.add_tasks(len(args))
        self.progress.grow(len(added))
        return added

    def withdraw(self, task: int) -> bool:
        """Take back a task that has not started (its future was cancelled); False if it has."""
        with self.lock:
            if task >= self.state.tasks.n_tasks or self.state.tasks.states[task] is not TaskState.PENDING:
                return False
            self.store.withdraw_tasks(self.sweep_id, [task])
            return self.state.withdraw(task)

    def leave_alone(self, tasks: Iterable[int]) -> None:
        """Tasks of an earlier run of the sweep that this run does not run (a reopened Executor's)."""
        with self.lock:
            for task in tasks:
                self.state.withdraw(task)

    def stop_accepting(self) -> None:
        """No more tasks: the sweep ends once those it has end."""
        with self.lock:
            self.state.stop_accepting()

    # -- driving side (one thread) -----------------------------------------------------------

    def drive(self) -> None:
        """Run the sweep to its end; always leaves no worker behind. Raises what ended it early."""
        Driver(self, self.timing).drive()

    def let_go_of_claim(self) -> None:
        claims.let_go(self.claim)

