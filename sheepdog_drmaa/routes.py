"""The task server's routes for one live sweep: each worker's request in, the state's answer out.

Called from the server's threads, each under the run's lock. A report's ending goes through the
ledger (stored, then applied, then announced) before the worker gets its next batch; a store that
cannot be written ends the sweep, from the driving thread, with that error.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import messages, protocol
from .errors import ResultTooLarge, StoreError, StoreTooLarge
from .failures import format_size
from .model import AttemptDetail, Cause, Closing, Lease
from .records import with_source_file
from .server import Handler

if TYPE_CHECKING:  # the run hands itself in; the routes read and change it under its lock
    from .runner import Run

log = logging.getLogger(__name__)

OUT_OF_BAND_BYTES = 64 * 1024  # arguments larger than this travel beside the lease's pickle


def _say_if_started_again(run: Run, hello: messages.Hello) -> None:
    """Log a hello refused because another process already said hello under the worker's id."""
    known = run.state.workers.get(hello.worker)
    if known is not None and known.reached and not known.terminated and not run.cancel_requested.is_set():
        log.warning("worker %s said hello again from another process (host %s, process group %s; the first was on "
                    "%s, process group %s): the scheduler started its job again (Slurm requeues a job whose node "
                    "failed); the new process is told to exit, and the first one's tasks end as it does",
                    hello.worker, hello.host, hello.process_group, known.host, known.process_group)


class Routes:
    """The handlers of one run's task server, by route."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def handlers(self) -> dict[str, Handler]:
        return {protocol.ROUTE_HELLO: self.hello, protocol.ROUTE_LEASE: self.lease, protocol.ROUTE_REPORT: self.report,
                protocol.ROUTE_HEARTBEAT: self.heartbeat, protocol.ROUTE_SETUP_FAILED: self.setup_failed,
                protocol.ROUTE_TASK_DIED: self.task_died}

    def hello(self, message: messages.Hello) -> messages.HelloReply:
        worker, run = message.worker, self.run
        with run.lock, self._fatal_on_store_error():
            accepted = not run.cancel_requested.is_set() and run.state.hello(worker, message.host, time.time(),
                                                                             message.process_group)
            if accepted:
                self.run.store.record_worker_process(self.run.sweep_id, worker, message.host, message.process_group)
            else:
                _say_if_started_again(run, message)
            # A worker of the submission under way may start before its id is known here: it asks again.
            unknown_yet = not accepted and self.run.submitting and self.run.state.workers.get(worker) is None
        if not accepted:
            return messages.HelloReply(retry=protocol.HELLO_RETRY_SECONDS if unknown_yet else None)
        log.debug("worker %s reached the server from %s", worker, message.host)
        return messages.HelloReply(messages.Welcome(
            self.run.function, heartbeat_interval=self.run.options.heartbeat_interval,
            heartbeat_timeout=self.run.options.heartbeat_timeout, max_result_size=self.run.options.max_result_size,
            output_limit=self.run.options.output_limit))

    def setup_failed(self, message: messages.SetupFailed) -> messages.Ack:
        error = message.error
        text = (error.traceback or "") if error is not None else ""
        log.warning("worker %s could not load the function:\n%s", message.worker, text)
        with self.run.lock:
            self.run.state.setup_failed(message.worker, text)
        return messages.Ack()

    def lease(self, message: messages.LeaseRequest) -> messages.LeaseReply:
        """Store what the worker reports, then give it its next batch (none: it should exit)."""
        worker = message.worker
        now = time.time()
        with self.run.lock, self._fatal_on_store_error():
            self._accept_reports(worker, message.reports, now)
            if self.run.cancel_requested.is_set() or self.run.fatal is not None:
                return messages.LeaseReply()
            batch = self.run.state.lease(worker, now)
            if not batch:
                return messages.LeaseReply(wait=self.run.state.idle_poll(worker, now))
            args = self.run.store.record_leases(self.run.sweep_id, [Lease(a.task, a.number, worker, a.host, a.started)
                                                            for a in batch])
        return messages.LeaseReply(tuple(
            messages.LeasedTask(a.task, a.number, protocol.out_of_band(blob) if len(blob) > OUT_OF_BAND_BYTES else blob)
            for a, blob in zip(batch, args)))

    def report(self, message: messages.ReportRequest) -> messages.Ack:
        """Part of a batch, reported before the batch's end."""
        with self.run.lock, self._fatal_on_store_error():
            self._accept_reports(message.worker, message.reports, time.time())
        return messages.Ack()

    def _accept_reports(self, worker: str, reports: tuple[messages.Report, ...], now: float) -> None:
        """Store the reported endings first, all in one transaction; only once they are stored do
        their tasks change state. A result the store cannot hold becomes that task's failure."""
        closings: list[Closing] = []
        seen, late = set(), []
        for report in reports:
            task, number = report.task, report.number
            if task in seen or self.run.state.current(worker, task, number) is None:
                late.append(task)
                continue
            seen.add(task)
            cause, detail, result, error, output = self._reported_ending(report)
            closing = self.run.state.report(worker, task, number, cause, now, detail)
            assert closing is not None  # current, as checked above
            closings.append(closing._replace(result=result, error=error, output=output))
        if late:
            log.info("dropped %d late reports from %s (tasks %s): those attempts were already closed", len(late),
                     worker, ", ".join(map(str, late[:10])) + (" ..." if len(late) > 10 else ""))
        if not closings:
            return
        try:
            self.run.ledger.commit(closings)
        except StoreTooLarge:  # one of them (at least) does not fit: store them one by one
            for closing in closings:
                try:
                    self.run.ledger.commit([closing])
                except StoreTooLarge as too_large:
                    self.run.ledger.commit([self._too_large(closing, too_large)])

    def _reported_ending(self, report: messages.Report
                         ) -> tuple[Cause, AttemptDetail, bytes | None, bytes | None, dict[str, str]]:
        """A worker's report as (cause, detail, pickled result, pickled exception, output)."""
        usage = dict(report.usage or {})
        output = report.output.streams() if report.output is not None else {}
        exception = report.exception
        if exception is not None:
            types = exception.types or []
            summary = f"{exception.type}: {exception.message}"
            if self.run.options.memory is not None and "builtins.MemoryError" in types:
                summary += (f" (out of the memory asked for, memory={format_size(int(self.run.options.memory))} per "
                            "worker: ask for more)")
            detail = AttemptDetail(summary=summary, resource_usage=usage, exception_types=tuple(types),
                                   traceback=with_source_file(exception.traceback or "", self.run.source_file))
            return Cause.EXCEPTION, detail, None, exception.pickle, output
        return Cause.RESULT, AttemptDetail(resource_usage=usage), report.result, None, output

    def _too_large(self, closing: Closing, too_large: StoreTooLarge) -> Closing:
        """The ending of an attempt whose result (or exception) the store refused: a failure naming the limit."""
        size = len(closing.result or b"") + len(closing.error or b"")
        detail = closing.detail._replace(
            summary=f"ResultTooLarge: the pickled result is {size:,} bytes, more than the store can hold "
                    f"({too_large}); return less, or write it to a file and return the path",
            exception_types=(protocol.qualified_name(ResultTooLarge),))
        replaced = self.run.state.closing(closing.attempt, Cause.EXCEPTION, closing.ended, detail)
        return replaced._replace(output=closing.output)

    @contextlib.contextmanager
    def _fatal_on_store_error(self) -> Iterator[None]:
        """A store that cannot be written ends the sweep (from the driving thread) with that error."""
        try:
            yield
        except StoreError as error:
            if self.run.fatal is None:
                self.run.fatal = error
            raise

    def heartbeat(self, message: messages.Heartbeat) -> messages.HeartbeatReply:
        running = message.running
        named = (running.task, running.number, running.elapsed) if running is not None else None
        with self.run.lock:
            holds = self.run.state.heartbeat(message.worker, named, time.time())
        return messages.HeartbeatReply(holds)

    def task_died(self, message: messages.TaskDied) -> messages.Ack:
        """The worker's parent names the task its child was running as it died."""
        with self.run.lock:
            self.run.state.task_died(message.worker, message.task, message.number, message.max_rss_kb)
        return messages.Ack()
