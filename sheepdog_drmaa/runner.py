"""A running sweep: ties the pure state, the store, the task server and a backend together.

One thread (the caller's, for ``map``) drives the backend: it submits workers, receives their
exit information, terminates overdue or surplus ones, and updates the progress display. The
server's threads handle hellos, leases, reports and heartbeats. Both go through one lock, which
is never held while the scheduler is asked anything (it may take seconds to answer).
"""
from __future__ import annotations

import array
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from . import claims, messages, protocol
from .backends import Backend, WorkerSpec
from .driver import Driver, current_timing
from .errors import (
    ResultTooLarge,
    StoreError,
    StoreTooLarge,
)
from .failures import format_size
from .ledger import Ledger
from .model import Cause, Claim, Closing, Lease
from .options import Options
from .progress import Progress
from .records import with_source_file
from .server import Handler, TaskServer, make_app
from .state import SweepState
from .store import Store

log = logging.getLogger(__name__)

OUT_OF_BAND_BYTES = 64 * 1024  # arguments larger than this travel beside the lease's pickle


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

    def __iter__(self) -> Iterator[int]:
        position = 0
        while True:
            with self.changed:
                while position >= len(self.indices) and not self.closed:
                    self.changed.wait()
                fresh, closed = self.indices[position:], self.closed
            yield from fresh
            position += len(fresh)
            if closed and position >= len(self.indices):
                return


class Run:
    """The live side of one sweep in this process."""

    def __init__(self, *, store: Store, sweep_id: str, label: str, n_tasks: int, function: bytes,
                 backend: Backend, spec_without_url: WorkerSpec, key: bytes, key_path: str,
                 host: str, bind: str, port: int, options: Options, done: list[int], claim: Claim,
                 source_file: str | None = None) -> None:
        self.store, self.sweep_id, self.label, self.claim = store, sweep_id, label, claim
        self.source_file = source_file  # where f was defined, to name its frames in remote tracebacks
        self.function, self.backend, self.key_path = function, backend, key_path
        self.options = options
        self.lock = threading.RLock()
        self.state = SweepState(
            n_tasks, retries=options.retries,
            retry_exceptions=tuple(protocol.qualified_name(t) for t in options.retry_exceptions),
            tasks_per_worker=options.tasks_per_worker,
            max_workers=options.workers or options.max_workers, timeout=options.timeout,
            heartbeat_timeout=options.heartbeat_timeout, done=done, attempts_made=store.attempts_made(sweep_id),
            walltime=options.runtime_limit(),
            task_time=options.task_time, memory_limit=options.memory)
        self.completed = Completions(done)
        self.ledger = Ledger(store, sweep_id, self.state, self.completed.add)
        self.timing = current_timing()  # read in the caller's context: tests set it there
        handlers: dict[str, Handler] = {
            protocol.ROUTE_HELLO: self._hello, protocol.ROUTE_LEASE: self._lease, protocol.ROUTE_REPORT: self._report,
            protocol.ROUTE_HEARTBEAT: self._heartbeat, protocol.ROUTE_SETUP_FAILED: self._setup_failed,
            protocol.ROUTE_TASK_DIED: self._task_died}
        # A report carries one result (or pickled exception), the output kept (up to 3 bytes a
        # character once decoded, for each of two streams) and its envelope; a request carries
        # the reports gathered below the flush size, and one more.
        max_body = (options.max_result_size + 6 * options.output_limit + protocol.ENVELOPE_BYTES
                    + protocol.REPORT_FLUSH_BYTES)
        self.server = TaskServer(make_app(key, handlers, max_body=max_body), bind, port)
        self.url = self.server.url_for(host)
        environment = dict(spec_without_url.environment)
        environment[protocol.ENV_URL] = self.url
        environment[protocol.ENV_KEY_FILE] = key_path
        self.spec = dataclasses.replace(spec_without_url, environment=environment)
        self.progress = Progress(n_tasks, options.progress, label)
        self.submitting = False  # a submission is under way, outside the lock
        self.cancel_requested = threading.Event()
        self.cancel_reason: str | None = None
        self.finished = threading.Event()
        self.outcome: BaseException | None = None
        self.fatal: BaseException | None = None  # a store error met by a server thread: ends the sweep

    # -- server side (server threads) ---------------------------------------------------------

    def _hello(self, message: messages.Hello) -> messages.HelloReply:
        worker = message.worker
        with self.lock, self._fatal_on_store_error():
            accepted = not self.cancel_requested.is_set() and self.state.hello(worker, message.host, time.time())
            if accepted:
                self.store.record_worker_process(self.sweep_id, worker, message.host, message.process_group)
            # A worker of the submission under way may start before its id is known here: it asks again.
            unknown_yet = not accepted and self.submitting and self.state.workers.get(worker) is None
        if not accepted:
            return messages.HelloReply(retry=protocol.HELLO_RETRY_SECONDS if unknown_yet else None)
        log.debug("worker %s reached the server from %s", worker, message.host)
        return messages.HelloReply(messages.Welcome(
            self.function, heartbeat_interval=self.options.heartbeat_interval,
            heartbeat_timeout=self.options.heartbeat_timeout, max_result_size=self.options.max_result_size,
            output_limit=self.options.output_limit))

    def _setup_failed(self, message: messages.SetupFailed) -> messages.Ack:
        error = message.error
        text = (error.traceback or "") if error is not None else ""
        log.warning("worker %s could not load the function:\n%s", message.worker, text)
        with self.lock:
            self.state.setup_failed(message.worker, text)
        return messages.Ack()

    def _lease(self, message: messages.LeaseRequest) -> messages.LeaseReply:
        """Store what the worker reports, then give it its next batch (none: it should exit)."""
        worker = message.worker
        now = time.time()
        with self.lock, self._fatal_on_store_error():
            self._accept_reports(worker, message.reports, now)
            if self.cancel_requested.is_set() or self.fatal is not None:
                return messages.LeaseReply()
            batch = self.state.lease(worker, now)
            if not batch:
                return messages.LeaseReply()
            args = self.store.record_leases(self.sweep_id, [Lease(a.task, a.number, worker, a.host, a.started)
                                                            for a in batch])
        return messages.LeaseReply(tuple(
            messages.LeasedTask(a.task, a.number, protocol.out_of_band(blob) if len(blob) > OUT_OF_BAND_BYTES else blob)
            for a, blob in zip(batch, args)))

    def _report(self, message: messages.ReportRequest) -> messages.Ack:
        """Part of a batch, reported before the batch's end."""
        with self.lock, self._fatal_on_store_error():
            self._accept_reports(message.worker, message.reports, time.time())
        return messages.Ack()

    def _accept_reports(self, worker: str, reports: tuple[messages.Report, ...], now: float) -> None:
        """Store the reported endings first, all in one transaction; only once they are stored do
        their tasks change state. A result the store cannot hold becomes that task's failure."""
        closings: list[Closing] = []
        seen, late = set(), []
        for report in reports:
            task, number = report.task, report.number
            if task in seen or self.state.current(worker, task, number) is None:
                late.append(task)
                continue
            seen.add(task)
            cause, detail, result, error, output = self._reported_ending(report)
            closing = self.state.report(worker, task, number, cause, now, detail)
            assert closing is not None  # current, as checked above
            closings.append(closing._replace(result=result, error=error, output=output))
        if late:
            log.info("dropped %d late reports from %s (tasks %s): those attempts were already closed", len(late),
                     worker, ", ".join(map(str, late[:10])) + (" ..." if len(late) > 10 else ""))
        if not closings:
            return
        try:
            self.ledger.close(closings)
        except StoreTooLarge:  # one of them (at least) does not fit: store them one by one
            for closing in closings:
                try:
                    self.ledger.close([closing])
                except StoreTooLarge as too_large:
                    self.ledger.close([self._too_large(closing, too_large)])

    def _reported_ending(self, report: messages.Report
                         ) -> tuple[Cause, dict[str, Any], bytes | None, bytes | None, dict[str, str]]:
        """A worker's report as (cause, detail, pickled result, pickled exception, output)."""
        detail: dict[str, Any] = {"resource_usage": dict(report.usage or {})}
        output = report.output.streams() if report.output is not None else {}
        exception = report.exception
        if exception is not None:
            types = exception.types or []
            summary = f"{exception.type}: {exception.message}"
            if self.options.memory is not None and "builtins.MemoryError" in types:
                summary += (f" (out of the memory asked for, memory={format_size(int(self.options.memory))} per "
                            "worker: ask for more)")
            detail.update({"summary": summary,
                           "exception_types": list(types),
                           "traceback": with_source_file(exception.traceback or "", self.source_file)})
            return Cause.EXCEPTION, detail, None, exception.pickle, output
        return Cause.RESULT, detail, report.result, None, output

    def _too_large(self, closing: Closing, too_large: StoreTooLarge) -> Closing:
        """The ending of an attempt whose result (or exception) the store refused: a failure naming the limit."""
        size = len(closing.result or b"") + len(closing.error or b"")
        detail = dict(closing.detail, summary=f"ResultTooLarge: the pickled result is {size:,} bytes, more than the "
                                              f"store can hold ({too_large}); return less, or write it to a file and "
                                              "return the path",
                      exception_types=[protocol.qualified_name(ResultTooLarge)])
        replaced = self.state.closing(closing.attempt, Cause.EXCEPTION, closing.ended, detail)
        return replaced._replace(output=closing.output)

    @contextlib.contextmanager
    def _fatal_on_store_error(self) -> Iterator[None]:
        """A store that cannot be written ends the sweep (from the driving thread) with that error."""
        try:
            yield
        except StoreError as error:
            if self.fatal is None:
                self.fatal = error
            raise

    def _heartbeat(self, message: messages.Heartbeat) -> messages.HeartbeatReply:
        running = message.running
        named = (running.task, running.number, running.elapsed) if running is not None else None
        with self.lock:
            holds = self.state.heartbeat(message.worker, named, time.time())
        return messages.HeartbeatReply(holds)

    def _task_died(self, message: messages.TaskDied) -> messages.Ack:
        """The worker's parent names the task its child was running as it died."""
        detail = {"peak_rss_kb": message.max_rss_kb} if message.max_rss_kb is not None else {}
        with self.lock:
            self.state.task_died(message.worker, message.task, message.number, detail)
        return messages.Ack()

    # -- the interface of the user's Sweep handle ----------------------------------------------

    def start_in_background(self) -> None:
        """Drive the sweep from a thread; its ending is kept in ``error`` and waited for with ``wait``."""
        def drive_quietly() -> None:
            try:
                self.drive()
            except BaseException:
                pass  # kept in self.outcome, raised by the handle's results()
        threading.Thread(target=drive_quietly, name=f"sheepdog-{self.sweep_id}", daemon=True).start()

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

    def completions(self) -> Iterator[int]:
        """Indices of tasks as they end for good (done or failed), until the sweep ends; readable once."""
        return iter(self.completed)

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

    # -- driving side (one thread) -----------------------------------------------------------

    def drive(self) -> None:
        """Run the sweep to its end; always leaves no worker behind. Raises what ended it early."""
        Driver(self, self.timing).drive()

    def let_go_of_claim(self) -> None:
        claims.let_go(self.claim)

