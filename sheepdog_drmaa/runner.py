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
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from . import claims, messages, protocol
from .backends import Backend, WorkerSpec, log_paths
from .claims import CLAIM_REFRESH_SECONDS
from .errors import (
    ResultTooLarge,
    SchedulerOutage,
    SchedulerUnreachable,
    StoreError,
    StoreTooLarge,
    SubmissionRefused,
    SweepCancelled,
    SweepLocked,
    WorkersCannotStart,
)
from .failures import format_size
from .model import AttemptEnd, Cause, Claim, ExitInfo, Lease, SweepPhase, TaskState
from .options import Options
from .progress import Progress
from .records import with_source_file
from .server import Handler, TaskServer, make_app
from .store import Store
from .sweep import Attempt, StartFailure, SweepState, Worker

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
OUT_OF_BAND_BYTES = 64 * 1024  # arguments larger than this travel beside the lease's pickle
REMOVAL_BATCH = 50
SUBMIT_RETRY_SECONDS = 3.0
REFUSED_RETRY_SECONDS = 30.0
REAP_SECONDS = 15.0
LOG_TAIL_BYTES = 1500
# The verdict the job's shell writes last when a set-up line fails (backends.setup_script).
_SETUP_LINE_FAILED = re.compile(r"sheepdog: set-up line (\d+) ")  # mid-line when the output had no newline


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
            task_time=options.task_time, memory_limit=self._memory_limit(options))
        self.completed = Completions(done)
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
        self.to_remove: list[str] = []  # surplus workers not yet removed from the scheduler
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
            unknown_yet = not accepted and self.submitting and worker not in self.state.workers
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
        ends: list[tuple[Attempt, Cause, dict[str, Any], bytes | None, bytes | None, dict[str, str]]] = []
        seen, late = set(), []
        for report in reports:
            task, number = report.task, report.number
            attempt = self.state.current(worker, task, number)
            if attempt is None or task in seen:
                late.append(task)
                continue
            seen.add(task)
            ends.append((attempt, *self._reported_ending(report)))
        if late:
            log.info("dropped %d late reports from %s (tasks %s): those attempts were already closed", len(late),
                     worker, ", ".join(map(str, late[:10])) + (" ..." if len(late) > 10 else ""))
        if not ends:
            return
        try:
            self._store_ends(ends, now)
        except StoreTooLarge:  # one of them (at least) does not fit: store them one by one
            for position, end in enumerate(ends):
                try:
                    self._store_ends([end], now)
                except StoreTooLarge as too_large:
                    ends[position] = end = self._too_large(end, too_large)
                    self._store_ends([end], now)
        for attempt, cause, detail, _, _, _ in ends:
            self.state.finish(worker, attempt.task, attempt.number, cause, now, detail)
            self._announce_end(attempt)

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

    @staticmethod
    def _too_large(end: tuple[Attempt, Cause, dict[str, Any], bytes | None, bytes | None, dict[str, str]],
                   too_large: StoreTooLarge
                   ) -> tuple[Attempt, Cause, dict[str, Any], bytes | None, bytes | None, dict[str, str]]:
        """The ending of an attempt whose result (or exception) the store refused: a failure naming the limit."""
        attempt, _, detail, result, error, output = end
        size = len(result or b"") + len(error or b"")
        detail = dict(detail, summary=f"ResultTooLarge: the pickled result is {size:,} bytes, more than the store "
                                      f"can hold ({too_large}); return less, or write it to a file and return the path",
                      exception_types=[protocol.qualified_name(ResultTooLarge)])
        return attempt, Cause.EXCEPTION, detail, None, None, output

    def _store_ends(self, ends: list[tuple[Attempt, Cause, dict[str, Any], bytes | None, bytes | None,
                                           dict[str, str]]], now: float) -> None:
        self.store.record_ends(self.sweep_id, [
            AttemptEnd(attempt.task, attempt.number, cause.value, now, detail,
                       self.state.outcome(attempt, cause, detail).value, result, error, output)
            for attempt, cause, detail, result, error, output in ends])

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

    def _persist_ends(self, attempts: list[Attempt], worker_ended: str | None = None) -> None:
        """Store attempts the state has already ended (by the scheduler's word or our own decision),
        in one transaction with their worker's ending when that is what ended them."""
        ends = []
        for attempt in attempts:
            assert attempt.cause is not None and attempt.ended is not None
            ends.append(AttemptEnd(attempt.task, attempt.number, attempt.cause.value, attempt.ended, attempt.detail,
                                   self.state.states[attempt.task].value))
        self.store.record_ends(self.sweep_id, ends, worker_ended=worker_ended)
        for attempt in attempts:
            self._announce_end(attempt)

    def _announce_end(self, attempt: Attempt) -> None:
        assert attempt.cause is not None
        task_state = self.state.states[attempt.task].value
        if task_state in (TaskState.DONE, TaskState.FAILED):
            self.completed.add(attempt.task)
        if attempt.cause not in (Cause.RESULT, Cause.RETURNED, Cause.CANCELLED):
            log.log(logging.INFO if task_state == TaskState.PENDING else logging.WARNING,
                    "task %d attempt %d: %s (%s); task is now %s", attempt.task, attempt.number,
                    attempt.cause.value, attempt.detail.get("summary", ""), task_state)

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
        try:
            self._loop()
        except BaseException as error:
            self.outcome = error
            raise
        finally:
            self._shut_down()

    def _loop(self) -> None:
        claimed = submit_after = 0.0
        unreachable_since: float | None = None  # when submitting first failed for an unreachable scheduler
        while True:
            if time.monotonic() - claimed > CLAIM_REFRESH_SECONDS:
                if not self.store.refresh_claim(self.sweep_id, self.claim.token or ""):
                    raise SweepLocked(f"sweep {self.label} is no longer claimed by this client (cancelled with "
                                      "`sheepdog-drmaa cancel`, or taken over by a client that judged this one "
                                      "dead); stopping here so that only one client runs it")
                claimed = time.monotonic()
            with self.lock:
                if self.fatal is not None:
                    raise self.fatal
                if self.state.finished:
                    return
                if self.cancel_requested.is_set():
                    raise SweepCancelled(self.cancel_reason or f"sweep {self.label} was cancelled")
                if self.state.start_failure is not None:
                    raise WorkersCannotStart(self._start_failure_message(self.state.start_failure))
                wanted = self.state.workers_to_submit() if time.monotonic() >= submit_after else 0
                self.submitting = bool(wanted)
            if wanted:  # outside the lock: a scheduler slow to answer must not hold up the workers' requests
                ids: list[str] = []
                try:
                    ids = self.backend.submit(wanted, self.spec)
                    unreachable_since = None
                except SchedulerUnreachable as error:
                    unreachable_since = self._still_unreachable(error, unreachable_since)
                    submit_after = time.monotonic() + SUBMIT_RETRY_SECONDS
                except SubmissionRefused as error:
                    unreachable_since = None  # it answered
                    # With workers of this sweep still alive, a refusal is most often a limit of the site
                    # (jobs per user, say) that their ending lifts; without any, nothing would ever run.
                    with self.lock:
                        alive = bool(self.state.workers)
                    if not alive:
                        raise
                    log.warning("%s; %d workers of this sweep are still alive, so trying again in %g s",
                                error, len(self.state.workers), REFUSED_RETRY_SECONDS)
                    submit_after = time.monotonic() + REFUSED_RETRY_SECONDS
                finally:
                    with self.lock:
                        if ids:
                            self.state.add_workers(ids)
                            self.store.record_workers(self.sweep_id, ids)
                            log.info("submitted %d workers (%s..%s)", len(ids), ids[0], ids[-1])
                        self.submitting = False
            info = self.backend.wait_any(POLL_SECONDS)
            while info is not None:
                self._worker_ended(info)
                info = self.backend.wait_any(0)
            started = self.backend.running_hosts()
            with self.lock:
                now = time.time()
                overdue = self.state.overdue(now)
                for worker, cause in overdue:
                    ended = self.state.expire(worker, cause, now)
                    if ended:
                        self._persist_ends(ended)
                stuck = self.state.unresponsive(started, now)
                surplus = self.state.surplus_workers()
                counts = self.state.counts()
                avoid = tuple(sorted(self.state.silent_hosts))
            if avoid != self.spec.avoid_hosts:  # a host written off, or taken back (only slow)
                log.info("workers of this sweep are not sent to: %s", ", ".join(avoid) or "(any host again)")
                self.spec = dataclasses.replace(self.spec, avoid_hosts=avoid)
            if stuck:
                self._write_off(stuck)
            # Outside the lock: a scheduler that hangs must not stall the workers' requests.
            if overdue:
                self.backend.terminate([worker for worker, _ in overdue])
            if surplus:
                log.info("removing %d queued workers that are no longer needed", len(surplus))
                self.to_remove.extend(surplus)
            if self.to_remove:  # a batch per turn, so that removing many never holds up the loop
                batch, self.to_remove = self.to_remove[:REMOVAL_BATCH], self.to_remove[REMOVAL_BATCH:]
                self.backend.terminate(batch)
            self.progress.update(counts)

    def _still_unreachable(self, error: SchedulerUnreachable, since: float | None) -> float:
        """Log a failed submission to be tried again (at WARNING once per outage). With no worker of the
        sweep alive to carry on, an outage longer than ``outage_wait`` ends the sweep (a named sweep
        resumes). Returns since when the outage has been waited out with no worker alive."""
        now = time.monotonic()
        log.log(logging.WARNING if since is None else logging.INFO, "%s; trying again every %g s", error,
                SUBMIT_RETRY_SECONDS)
        with self.lock:
            alive = bool(self.state.workers)
        if alive or since is None:
            return now  # the bound counts from when no worker was left to carry on
        if now - since >= self.options.outage_wait:
            raise SchedulerOutage(f"{error}; it has not answered for {now - since:.0f} s while no worker of this "
                                  f"sweep was alive (outage_wait={self.options.outage_wait:g}). Run the sweep again "
                                  "once the scheduler answers (a named sweep resumes)")
        return since

    def _write_off(self, stuck: list[Worker]) -> None:
        """Remove workers that started but never reached the server, and send no more to silent hosts."""
        for worker in stuck:
            host = worker.dispatched_to
            if worker.reached:
                log.warning("worker %s said hello from %s but has asked for no work within %g s (loading the "
                            "function hung?): it is removed", worker.id, worker.host, self.state.hello_timeout)
                continue
            if host is not None and host not in self.state.silent_hosts:
                log.warning("worker %s has been shown running on %s for %g s but never reached the server; other "
                            "workers there did, so the scheduler's view of this one is stale: it is removed",
                            worker.id, host, self.state.hello_timeout)
                continue
            log.warning("worker %s was started on %s but has not reached the server at %s within %g s: that host "
                        "is down or cannot reach this one. The worker is removed%s.", worker.id,
                        host or "an unknown host", self.url, self.state.hello_timeout,
                        " and no more workers of this sweep are sent there" if host else "")
        self.backend.terminate([worker.id for worker in stuck])

    @staticmethod
    def _memory_limit(options: Options) -> int | None:
        assert options.memory is None or isinstance(options.memory, int)  # bytes, once validated
        return options.memory

    def _worker_ended(self, info: ExitInfo) -> None:
        # A scheduler may say in the worker's stderr that it killed it for memory (slurmstepd does).
        tail = _tail(log_paths(self.spec, info.worker)["stderr"]) if info.signaled or info.aborted else ""
        with self.lock:
            ended = self.state.worker_ended(info, time.time(), tail)
            if ended:
                self._persist_ends(ended, worker_ended=info.worker)
            else:
                self.store.record_workers_ended(self.sweep_id, [info.worker])

    def _shut_down(self) -> None:
        """Terminate every worker still alive, wait (bounded) until the scheduler let them go, stop serving."""
        with self.lock:
            if not self.state.finished:
                self.cancel_requested.set()
                cancelled = self.state.cancel(time.time())
                # A client that lost its claim leaves the store to the one that took it over.
                if cancelled and not isinstance(self.outcome, SweepLocked):
                    self._quietly(self._persist_ends, cancelled)
            # Every worker not known to have ended, already asked to go or not: whole arrays then
            # go in one scheduler call each.
            leftover = [w.id for w in self.state.workers.values() if not w.ended]
            for worker in self.state.workers.values():
                worker.terminated = True
        self.to_remove = []
        try:
            if leftover:
                self.backend.terminate(leftover)
            if self.state.finished:  # idle or queued workers, asked to go: nothing to wait for
                self._quietly(self.store.record_workers_ended, self.sweep_id, leftover)
            else:
                self._reap_all()
        finally:
            self.server.stop()
            self.backend.close()
            self.progress.update(self.state.counts())
            self.progress.close()
            try:
                os.unlink(self.key_path)
            except OSError:
                pass
            if self.state.finished:
                final = SweepPhase.FAILED if self.state.n_failed else SweepPhase.FINISHED
            else:
                final = SweepPhase.CANCELLED if isinstance(self.outcome, SweepCancelled) else SweepPhase.INTERRUPTED
            self._quietly(self.store.release_claim, self.sweep_id, self.claim.token, final)
            claims.let_go(self.claim)
            self.completed.close()
            self.finished.set()

    def _reap_all(self) -> None:
        deadline = time.monotonic() + REAP_SECONDS
        while time.monotonic() < deadline:
            if not self.state.workers:
                return
            info = self.backend.wait_any(POLL_SECONDS)
            if info is not None:
                self._quietly(self._worker_ended, info)

    def _quietly(self, call: Callable[..., Any], *args: Any) -> None:
        """While shutting down, a store error is logged, not raised: the jobs must still go, and the
        error that ended the sweep (often that very store error) is what the caller sees."""
        try:
            call(*args)
        except StoreError as error:
            log.error("while shutting down sweep %s: %s", self.label, error)

    def _start_failure_message(self, failure: StartFailure) -> str:
        if failure.setup_error:
            tails = f"It reached the server but could not load the function:\n{failure.setup_error.rstrip()}"
        else:
            tails = "\n".join(f"--- {name} of worker {failure.worker} ({path}):\n{_tail(path)}"
                              for name, path in log_paths(self.spec, failure.worker).items())
        failed_line = _SETUP_LINE_FAILED.search(tails)
        if failed_line:
            advice = (f"Fix set-up line {failed_line[1]} of setup= for the execution nodes: its text, status and "
                      "output are above.")
        else:
            advice = (f"Check that python={self.spec.python!r} exists on the execution nodes with sheepdog_drmaa and "
                      f"cloudpickle importable, and that the nodes can reach {self.url} (see host=).")
        return (f"{failure.count} workers in a row ended before they could run a task from {self.url}; the last, "
                f"{failure.worker}: {failure.ending.summary}.\n{tails}\n{advice}")


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            text = handle.read().decode(errors="replace").strip()
    except OSError as error:
        return f"(not readable: {error.strerror})"
    return text or "(empty)"
