"""Removals the scheduler could not take while it was unreachable, kept in order and done once it answers.

They are tried again with the scheduler's own command (``qdel``, ``scancel``), run in the background
and killed when it hangs, not through the DRMAA session: after an outage, Son of Grid Engine's
``control()`` can block for minutes, and a sweep whose every task is done must still return within
its bound. Once the scheduler has been unreachable, every later removal goes this way too, and on
Slurm every removal does (slurm-drmaa's ``control()`` waits 9 s for a slurmctld that is down). A
scheduler without such a command is asked through DRMAA.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Callable

from .commands import Background
from .schedulers import Scheduler

log = logging.getLogger(__name__)

# Tried again as soon as a listing shows the scheduler answering, and this often anyway.
RETRY_SECONDS = 5.0
# One removal command that has not answered by then is killed, and tried again.
COMMAND_TIMEOUT_SECONDS = 30.0

# Asks DRMAA to remove targets: returns the ones not asked because the scheduler proved unreachable, and why.
Send = Callable[[Sequence[str]], "tuple[list[str], BaseException | None]"]


class KeptRemovals:
    """The removals kept, the outage they wait out, and the one removal command under way."""

    def __init__(self, scheduler: Scheduler, send: Send, command_timeout: float = COMMAND_TIMEOUT_SECONDS) -> None:
        self.scheduler = scheduler
        self.send = send
        self.targets: dict[str, None] = {}  # in the order asked
        self.failed_at: float | None = None  # the last failure to reach the scheduler, while targets are kept
        self.began = 0.0  # the first failure of this outage
        self.next_retry = 0.0
        self.asked: list[str] = []  # what the command now running removes
        self.command = Background(command_timeout, with_errors=True)

    def __bool__(self) -> bool:
        return bool(self.targets)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.targets))

    @property
    def outage(self) -> bool:
        """Whether removals wait for the scheduler: asking it now would only wait for a failure."""
        return self.failed_at is not None

    def keep(self, targets: Sequence[str], error: BaseException | str) -> None:
        """Keep targets the scheduler could not be asked to remove; the first of an outage is said at WARNING."""
        now = time.monotonic()
        if self.failed_at is None:
            self.began = now
            self.next_retry = now + RETRY_SECONDS
            log.warning("cannot reach %s to remove %d workers or jobs (%s): %s; kept, and done as soon as it "
                        "answers again", self.scheduler.title, len(targets), self.scheduler.removal_hint(targets),
                        error)
        self.failed_at = now
        self.targets.update(dict.fromkeys(targets))

    def add(self, targets: Sequence[str]) -> None:
        """Removals to make in the background at the next turn, the scheduler being thought to answer."""
        self.targets.update(dict.fromkeys(targets))
        self.next_retry = 0.0

    def retry(self, answered_at: float) -> None:
        """Read the answer of the last try; start the next once a listing answered after the last failure
        (``answered_at``), and every RETRY_SECONDS anyway (a listing begun in the outage may hang)."""
        answer = self.command.answer()
        if answer is not None:
            self._settle(*answer)
        if not self.targets or self.command.busy:
            return
        now = time.monotonic()
        if now < self.next_retry and (self.failed_at is None or answered_at <= self.failed_at):
            return
        self.next_retry = now + RETRY_SECONDS
        self.asked = list(self.targets)
        remove = self.scheduler.remove_command
        if remove and shutil.which(remove) is not None:
            self.command.start([remove, *self.asked])
            return
        left, error = self.send(self.asked)
        self._settle(0 if not left else 1, str(error or ""), left)

    def _settle(self, status: int, output: str, left: Sequence[str] = ()) -> None:
        if left or not self.scheduler.removed(status, output):
            reason = output.strip() or f"status {status}"
            if self.failed_at is None:  # a removal made in the background after an outage failed: another one
                self.keep(self.asked, reason)
            log.debug("%s still unreachable: %s", self.scheduler.title, reason)
            self.failed_at = time.monotonic()
            return
        for target in self.asked:
            self.targets.pop(target, None)
        self.next_retry = 0.0  # the scheduler answers: any target kept meanwhile goes at the next turn
        if not self.targets and self.failed_at is not None:
            log.warning("%s answers again after %.0f s: removed the %d workers or jobs kept meanwhile (%s)",
                        self.scheduler.title, time.monotonic() - self.began, len(self.asked), " ".join(self.asked))
            self.failed_at = None
        self.asked = []

    def stop(self) -> None:
        """Give up the command under way, taking its answer if it has just ended."""
        answer = self.command.answer()
        if answer is not None:
            self._settle(*answer)
        self.command.stop()
