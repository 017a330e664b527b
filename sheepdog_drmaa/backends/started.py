"""Which workers the scheduler shows started, and on which host: the DRMAA backend's started-hosts watch.

DRMAA does not say where a job runs, so the scheduler's own listing (``qstat -s r``, ``squeue``) is
run in the background (a subprocess read on a later call, never waited for), at most every few
seconds and only while someone asks: while the driver wants the hosts, or while removals wait for
the scheduler to answer again, which a successful listing shows.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Container, Sequence
from dataclasses import dataclass

from .commands import Background
from .schedulers import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartedTimings:
    """How often the started workers are listed (seconds)."""

    every: float = 2.0  # at most this often
    wanted_for: float = 10.0  # only this long after the last ask (or while removals wait for an answer)
    timeout: float = 30.0  # a listing that hangs is given up


class StartedWatch:
    """The last listing of started workers, the next one, and when the scheduler last answered one."""

    def __init__(self, scheduler: Scheduler, timings: StartedTimings = StartedTimings()) -> None:
        self.scheduler = scheduler
        self.timings = timings
        self.lister = Background(timings.timeout)
        self.started: dict[str, str | None] = {}  # the last listing: started worker -> its host
        self.command: list[str] | None = None  # the listing command for the arrays last watched
        self._answered = float("-inf")  # when a listing last succeeded (the scheduler answers)
        self._next = 0.0
        self._wanted_until = 0.0

    def want(self, now: float) -> None:
        """Someone asks which workers started: keep listing them for a while."""
        self._wanted_until = now + self.timings.wanted_for

    def poll(self, now: float, arrays: Sequence[str], needed: bool = False) -> None:
        """Read a finished listing, and start the next one of ``arrays`` when due and wanted (or
        ``needed``: removals wait to see the scheduler answer). Never waits for the scheduler."""
        answer = self.lister.answer()
        if answer is not None:
            status, text = answer
            try:
                if status != 0:
                    raise ValueError("the listing command failed")
                self.started = self.scheduler.parse_started(text)
                self._answered = now
            except ValueError as error:
                log.debug("cannot list the started workers: %s", error)
        self.command = self.scheduler.started_command(arrays)
        wanted = now < self._wanted_until or needed
        if wanted and arrays and self.command and not self.lister.busy and now >= self._next:
            self._next = now + self.timings.every
            self.lister.start(self.command)

    @property
    def answered(self) -> float:
        """When a listing last showed the scheduler answering; never (-inf) where none can be run."""
        listed = self.command is not None and shutil.which(self.command[0]) is not None
        return self._answered if listed else float("-inf")

    def hosts(self, alive: Container[str]) -> dict[str, str | None]:
        """The workers the last listing showed started, among ``alive``, with their hosts."""
        return {worker: host for worker, host in self.started.items() if worker in alive}

    def stop(self) -> None:
        self.lister.stop()
