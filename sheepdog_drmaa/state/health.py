"""Whether workers can start at all: early deaths, hosts that never answer, workers that hang. Pure.

Workers that keep ending before they run a task (a wrong interpreter, a missing package, a host
that cannot reach the server) would otherwise be replaced for ever. Each such death is counted;
at ``start_failure_limit`` in a row the sweep stops with the last one's story. A host whose
workers are shown started but never say hello is written off, and no more workers go there.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..model import Cause, Ending
from .workers import Worker, WorkerPhase, Workers

# A worker the scheduler shows started that has not said hello after this many heartbeat
# timeouts (and at least HELLO_SECONDS: a loaded node starts Python slowly) is written off: its
# host is taken not to reach the server.
HELLO_TIMEOUTS = 2
HELLO_SECONDS = 10.0


@dataclass(frozen=True)
class StartFailure:
    """Why workers cannot start: the last early death seen."""

    worker: str
    ending: Ending
    count: int
    setup_error: str | None = None


class StartHealth:
    """Early deaths in a row, silent hosts, and when each host last said hello."""

    def __init__(self, *, start_failure_limit: int, heartbeat_timeout: float) -> None:
        self.start_failure_limit = start_failure_limit
        self.hello_timeout = max(HELLO_TIMEOUTS * heartbeat_timeout, HELLO_SECONDS)
        self.early_deaths = 0
        self.last_early_death: StartFailure | None = None
        self.silent_hosts: set[str] = set()  # hosts whose workers never reached the server
        self.last_hello_from: dict[str, float] = {}  # host -> when a worker there last said hello
        self.any_reached = False

    @property
    def start_failure(self) -> StartFailure | None:
        if self.early_deaths >= self.start_failure_limit:
            return self.last_early_death
        return None

    def said_hello(self, worker: Worker, host: str | None, now: float) -> None:
        """A worker said hello; one written off as silent from a silent host proves that host answers."""
        if worker.terminated:
            if worker.dispatched_to in self.silent_hosts and host:
                self.silent_hosts.discard(host)  # written off as silent, but only slow: its host answers
            return
        self.any_reached = True
        if host is not None:
            self.last_hello_from[host] = now

    def got_going(self) -> None:
        """A worker asked for work: whatever killed the earlier ones is not general."""
        self.early_deaths = 0

    def died_early(self, worker_id: str, ending: Ending, setup_error: str | None) -> None:
        self.early_deaths += 1
        self.last_early_death = StartFailure(worker_id, ending, self.early_deaths, setup_error)

    def unresponsive(self, workers: Workers, started: Mapping[str, str | None], now: float) -> list[Worker]:
        """Workers that said hello and never asked for work, and workers the scheduler has shown
        started (``started``: worker -> host) for longer than the hello timeout without having said
        hello: terminated and returned. A silent worker's host is written off (and each such host
        counts as a worker that could not start) unless another worker said hello from it since:
        then the scheduler's view was stale (a job that ended while it was unreachable, say), not
        the host dead."""
        stuck = []
        for hung in list(workers.in_phase(WorkerPhase.GREETED).values()):
            if hung.started is not None and now - hung.started > self.hello_timeout:
                workers.terminate(hung)
                self.died_early(hung.id, Ending(Cause.LOST, f"it said hello from {hung.host} but asked for no work "
                                                f"in {now - hung.started:.0f} s (loading the function hung?)",
                                                False), None)
                stuck.append(hung)
        unreached = workers.in_phase(WorkerPhase.SUBMITTED)
        for worker_id, host in started.items():
            worker = unreached.get(worker_id)
            if worker is None:
                continue
            if worker.dispatched is None:
                worker.dispatched, worker.dispatched_to = now, host
            elif now - worker.dispatched > self.hello_timeout:
                workers.terminate(worker)
                worker.went_quiet = True
                self._never_reached(worker, now)
                stuck.append(worker)
        return stuck

    def _never_reached(self, worker: Worker, now: float) -> None:
        assert worker.dispatched is not None
        silent = worker.dispatched_to
        if silent is not None and self.last_hello_from.get(silent, -math.inf) > worker.dispatched:
            return  # its host answers: only this job is stale
        if not self.any_reached:  # no worker ever reached the server: it is not one host's fault
            self.early_deaths = self.start_failure_limit
        elif silent is None or silent not in self.silent_hosts:  # a dead host counts once, however many
            self.early_deaths += 1
        if silent is not None:
            self.silent_hosts.add(silent)
        where = f"on {silent}" if silent else "by the scheduler"
        ending = Ending(Cause.LOST, f"it was started {where} {now - worker.dispatched:.0f} s ago and never reached "
                                    "the server", False)
        self.last_early_death = StartFailure(worker.id, ending, self.early_deaths)
