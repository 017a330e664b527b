"""The driving side of a live sweep: one thread that turns the clock, talks to the scheduler and
carries out what the pure state decides.

Each turn: refresh the claim, stop if the sweep ended (or was cancelled, or cannot start),
submit the workers the state asks for, collect the scheduler's word on ended workers, and tick
the state (overdue, silent and surplus workers). Every backend call is made outside the run's
lock, so that a scheduler slow to answer never holds up the workers' requests. How long to wait
between tries is a :class:`Timing`, set per context (:func:`use_timing`), never a patched constant.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .backends import log_paths
from .claims import CLAIM_REFRESH_SECONDS
from .errors import (
    SchedulerOutage,
    SchedulerUnreachable,
    StoreError,
    SubmissionRefused,
    SweepCancelled,
    SweepInterrupted,
    SweepLocked,
    WorkersCannotStart,
)
from .failures import NODE_FAILED
from .model import ExitInfo, SweepPhase
from .state import StartFailure, Tick, Worker

if TYPE_CHECKING:  # the run hands itself in; the driver only reads and drives it
    from .runner import Run

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 1500
# The verdict the job's shell writes last when a set-up line fails (backends.setup_script).
_SETUP_LINE_FAILED = re.compile(r"sheepdog: set-up line (\d+) ")  # mid-line when the output had no newline


@dataclass(frozen=True)
class Timing:
    """How long the driver waits between its tries, in seconds (and how many removals go per turn)."""

    poll: float = 0.1              # the longest wait for the scheduler's word in one turn
    submit_retry: float = 3.0      # after a submission the scheduler could not take
    refused_retry: float = 30.0    # after a refusal while workers of the sweep still run
    reap: float = 15.0             # the longest wait, shutting down, for terminated workers to end
    claim_refresh: float = CLAIM_REFRESH_SECONDS  # how often the claim on the sweep is renewed
    removal_batch: int = 50        # surplus workers removed per turn


DEFAULT_TIMING = Timing()
_timing: contextvars.ContextVar[Timing] = contextvars.ContextVar("sheepdog_timing", default=DEFAULT_TIMING)


@contextlib.contextmanager
def use_timing(timing: Timing) -> Iterator[None]:
    """Runs started inside this block wait by ``timing`` (tests reach rare branches in seconds)."""
    token = _timing.set(timing)
    try:
        yield
    finally:
        _timing.reset(token)


def current_timing() -> Timing:
    return _timing.get()


class Driver:
    """Runs one sweep to its end from one thread; always leaves no worker behind."""

    def __init__(self, run: Run, timing: Timing) -> None:
        self.run, self.timing = run, timing
        self.to_remove: list[str] = []  # surplus workers not yet removed from the scheduler
        self.submit_after = 0.0
        self.unreachable_since: float | None = None  # when submitting failed with no worker alive
        self.claimed = 0.0

    def drive(self) -> None:
        """Run the sweep to its end. Raises what ended it early."""
        try:
            while not self.step():
                pass
        except BaseException as error:
            self.run.outcome = error
            raise
        finally:
            Shutdown(self.run, self.timing).shut_down()

    def step(self) -> bool:
        """One turn; True once every task has ended."""
        run = self.run
        self._refresh_claim()
        with run.lock:
            if run.fatal is not None:
                raise run.fatal
            if run.state.finished:
                return True
            if run.cancel_requested.is_set():
                if run.interrupt_reason is not None:
                    raise SweepInterrupted(run.interrupt_reason)
                raise SweepCancelled(run.cancel_reason or f"sweep {run.label} was cancelled")
            if run.state.start_failure is not None:
                raise WorkersCannotStart(start_failure_message(run, run.state.start_failure))
            wanted = run.state.workers_to_submit() if time.monotonic() >= self.submit_after else 0
            run.submitting = bool(wanted)
        if wanted:
            self._submit(wanted)
        info = run.backend.wait_any(self.timing.poll)
        while info is not None:
            worker_ended(run, info)
            info = run.backend.wait_any(0)
        started = run.backend.running_hosts()
        with run.lock:
            now = time.time()
            overdue = run.state.expire_overdue(now)
            if overdue.closings:
                run.ledger.commit(overdue.closings)
            tick = run.state.tick(started, now)
        self._carry_out(tick, overdue.workers)
        run.progress.update(tick.counts)
        return False

    def _refresh_claim(self) -> None:
        run = self.run
        if time.monotonic() - self.claimed <= self.timing.claim_refresh:
            return
        if not run.store.refresh_claim(run.sweep_id, run.claim.token or ""):
            raise SweepLocked(f"sweep {run.label} is no longer claimed by this client (cancelled with "
                              "`sheepdog-drmaa cancel`, or taken over by a client that judged this one "
                              "dead); stopping here so that only one client runs it")
        self.claimed = time.monotonic()

    def _submit(self, wanted: int) -> None:
        """Submit ``wanted`` workers, outside the lock; a failure to be tried again sets when."""
        run = self.run
        ids: list[str] = []
        try:
            ids = run.backend.submit(wanted, run.spec)
            self.unreachable_since = None
        except SchedulerUnreachable as error:
            self._still_unreachable(error)
            self.submit_after = time.monotonic() + self.timing.submit_retry
        except SubmissionRefused as error:
            self.unreachable_since = None  # it answered
            # With workers of this sweep still alive, a refusal is most often a limit of the site
            # (jobs per user, say) that their ending lifts; without any, nothing would ever run.
            with run.lock:
                alive = len(run.state.workers)
            if not alive:
                raise
            log.warning("%s; %d workers of this sweep are still alive, so trying again in %g s",
                        error, alive, self.timing.refused_retry)
            self.submit_after = time.monotonic() + self.timing.refused_retry
        finally:
            with run.lock:
                if ids:
                    run.state.add_workers(ids)
                    run.store.record_workers(run.sweep_id, ids)
                    log.info("submitted %d workers (%s..%s)", len(ids), ids[0], ids[-1])
                run.submitting = False

    def _still_unreachable(self, error: SchedulerUnreachable) -> None:
        """Log a failed submission to be tried again (at WARNING once per outage). With no worker of the
        sweep alive to carry on, an outage longer than ``outage_wait`` ends the sweep (a named sweep
        resumes); the bound counts from when no worker was left to carry on."""
        run, now, since = self.run, time.monotonic(), self.unreachable_since
        log.log(logging.WARNING if since is None else logging.INFO, "%s; trying again every %g s", error,
                self.timing.submit_retry)
        with run.lock:
            alive = bool(len(run.state.workers))
        if alive or since is None:
            self.unreachable_since = now
            return
        if now - since >= run.options.outage_wait:
            raise SchedulerOutage(f"{error}; it has not answered for {now - since:.0f} s while no worker of this "
                                  f"sweep was alive (outage_wait={run.options.outage_wait:g}). Run the sweep again "
                                  "once the scheduler answers (a named sweep resumes)")

    def _carry_out(self, tick: Tick, overdue: list[str]) -> None:
        """What the tick decided, outside the lock: a scheduler that hangs must not stall the workers."""
        run = self.run
        if tick.avoid_hosts != run.spec.avoid_hosts:  # a host written off, or taken back (only slow)
            log.info("workers of this sweep are not sent to: %s", ", ".join(tick.avoid_hosts) or "(any host again)")
            run.spec = dataclasses.replace(run.spec, avoid_hosts=tick.avoid_hosts)
        if tick.written_off:
            self._write_off(tick.written_off)
        if overdue:
            run.backend.terminate(overdue)
        if tick.surplus:
            log.info("removing %d queued workers that are no longer needed", len(tick.surplus))
            self.to_remove.extend(tick.surplus)
        if self.to_remove:  # a batch per turn, so that removing many never holds up the loop
            size = self.timing.removal_batch
            batch, self.to_remove = self.to_remove[:size], self.to_remove[size:]
            run.backend.terminate(batch)

    def _write_off(self, stuck: list[Worker]) -> None:
        """Remove workers that started but never reached the server, and send no more to silent hosts."""
        run = self.run
        timeout, silent = run.state.health.hello_timeout, run.state.health.silent_hosts
        for worker in stuck:
            host = worker.dispatched_to
            if worker.reached:
                log.warning("worker %s said hello from %s but has asked for no work within %g s (loading the "
                            "function hung?): it is removed", worker.id, worker.host, timeout)
            elif host is not None and host not in silent:
                log.warning("worker %s has been shown running on %s for %g s but never reached the server; other "
                            "workers there did, so the scheduler's view of this one is stale: it is removed",
                            worker.id, host, timeout)
            else:
                log.warning("worker %s was started on %s but has not reached the server at %s within %g s: that "
                            "host is down or cannot reach this one. The worker is removed%s.", worker.id,
                            host or "an unknown host", run.url, timeout,
                            " and no more workers of this sweep are sent there" if host else "")
        run.backend.terminate([worker.id for worker in stuck])


def worker_ended(run: Run, info: ExitInfo) -> None:
    """The scheduler's word that a worker is gone: its held attempts end, stored with its ending."""
    # A scheduler may say in the worker's stderr that it killed it for memory (slurmstepd does).
    tail = _tail(log_paths(run.spec, info.worker)["stderr"]) if info.signaled or info.aborted else ""
    with run.lock:
        given_up = run.state.workers.quiet_ones([info.worker])
        closings = run.state.worker_ended(info, time.time(), tail)
        if closings:
            run.ledger.commit(closings, worker_ended=info.worker)
        else:
            run.store.record_workers_ended(run.sweep_id, [info.worker])
        if given_up and info.state == NODE_FAILED:
            run.store.add_to_lost_summaries(run.sweep_id, info.worker, "Slurm then ended its job NODE_FAIL: "
                                                                      "its node had failed")


def _say_not_waited_for(run: Run, quiet: dict[str, str | None]) -> None:
    """Name the removed workers of hosts that stopped answering, whose end the scheduler has not reported:
    their jobs stay listed until the host answers or is declared down, and the sweep does not wait."""
    if not quiet:
        return
    hosts = sorted({host or "an unknown host" for host in quiet.values()})
    log.warning("sweep %s did not wait for %d removed workers on %s, which stopped answering: the scheduler may "
                "list their jobs (%s) as still ending (Slurm: COMPLETING; Grid Engine: dr) until the host answers "
                "again or is declared down; their processes, if any are left, exit once they find the server gone",
                run.label, len(quiet), ", ".join(hosts), ", ".join(sorted(quiet)))


class Shutdown:
    """The end of a run, however it came: every worker still alive terminated, the scheduler given a
    bounded while to let them go, the server stopped, the claim released with the sweep's phase."""

    def __init__(self, run: Run, timing: Timing) -> None:
        self.run, self.timing = run, timing

    def shut_down(self) -> None:
        run = self.run
        with run.lock:
            if not run.state.finished:
                run.cancel_requested.set()
                cancelled = run.state.cancel(time.time())
                # A client that lost its claim leaves the store to the one that took it over.
                if isinstance(run.outcome, SweepLocked):
                    run.state.apply(cancelled)
                elif cancelled:
                    self._quietly(run.ledger.commit, cancelled)
            # Every worker not known to have ended, already asked to go or not: whole arrays then
            # go in one scheduler call each.
            leftover = run.state.terminate_all()
        try:
            if leftover:
                run.backend.terminate(leftover)
            if run.state.finished:  # idle or queued workers, asked to go: nothing to wait for
                self._quietly(run.store.record_workers_ended, run.sweep_id, leftover)
                _say_not_waited_for(run, run.state.workers.quiet_ones(leftover))
            else:
                self._reap_all()
        finally:
            self._let_go()

    def _let_go(self) -> None:
        run = self.run
        run.server.stop()
        run.backend.close()
        run.progress.update(run.state.counts())
        run.progress.close()
        with contextlib.suppress(OSError):
            os.unlink(run.key_path)
        if run.state.finished:
            final = SweepPhase.FAILED if run.state.tasks.n_failed else SweepPhase.FINISHED
        else:
            final = SweepPhase.CANCELLED if isinstance(run.outcome, SweepCancelled) else SweepPhase.INTERRUPTED
        self._quietly(run.store.release_claim, run.sweep_id, run.claim.token, final)
        run.let_go_of_claim()
        run.completed.close()
        run.finished.set()
        atexit.unregister(run.interrupt_at_exit)  # if it ran in the background, it no longer needs stopping

    def _reap_all(self) -> None:
        run = self.run
        deadline = time.monotonic() + self.timing.reap
        while time.monotonic() < deadline:
            if not len(run.state.workers):
                return
            info = run.backend.wait_any(self.timing.poll)
            if info is not None:
                self._quietly(worker_ended, run, info)

    def _quietly(self, call: Callable[..., Any], *args: Any) -> None:
        """While shutting down, a store error is logged, not raised: the jobs must still go, and the
        error that ended the sweep (often that very store error) is what the caller sees."""
        try:
            call(*args)
        except StoreError as error:
            log.error("while shutting down sweep %s: %s", self.run.label, error)


def start_failure_message(run: Run, failure: StartFailure) -> str:
    """Why workers cannot start, with the last one's output and what to check."""
    if failure.setup_error:
        tails = f"It reached the server but could not load the function:\n{failure.setup_error.rstrip()}"
    else:
        tails = "\n".join(f"--- {name} of worker {failure.worker} ({path}):\n{_tail(path)}"
                          for name, path in log_paths(run.spec, failure.worker).items())
    failed_line = _SETUP_LINE_FAILED.search(tails)
    if failed_line:
        advice = (f"Fix set-up line {failed_line[1]} of setup= for the execution nodes: its text, status and "
                  "output are above.")
    else:
        advice = (f"Check that python={run.spec.python!r} exists on the execution nodes with sheepdog_drmaa and "
                  f"cloudpickle importable, and that the nodes can reach {run.url} (see host=).")
    return (f"{failure.count} workers in a row ended before they could run a task from {run.url}; the last, "
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
