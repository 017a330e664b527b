"""The scheduler's own command-line tools (squeue, qstat, qdel, scancel ...), run so that they never
hold up a sweep: in the background, with their answer read later."""
from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from typing import Any

log = logging.getLogger(__name__)


class Background:
    """One scheduler command at a time, run in the background: its answer is read on a later call.

    Output goes to a file, not a pipe, so that a long answer cannot stall the command while nobody
    reads. A command still running after ``timeout`` seconds is killed and counts as failed.
    ``with_errors``: its stderr is part of the answer too (for commands that say on stderr what they did).
    """

    def __init__(self, timeout: float, with_errors: bool = False) -> None:
        self.timeout = timeout
        self.with_errors = with_errors
        self.process: subprocess.Popen[bytes] | None = None
        self.output: Any = None
        self.started = 0.0

    @property
    def busy(self) -> bool:
        return self.process is not None

    def start(self, command: list[str]) -> OSError | None:
        """Start ``command``; the error when it cannot be started (it is then not busy)."""
        try:
            self.output = tempfile.TemporaryFile()
        except OSError as error:
            return error
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.output,
                                            stderr=subprocess.STDOUT if self.with_errors else subprocess.DEVNULL)
        except OSError as error:
            log.debug("cannot run %s: %s", command[0], error)
            self.output.close()
            return error
        self.started = time.monotonic()
        return None

    def answer(self) -> tuple[int, str] | None:
        """(exit status, output) once the command has ended; None while it runs or when none ran.
        A command killed for taking too long answers with status -9."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            if time.monotonic() - self.started < self.timeout:
                return None
            self.process.kill()  # hung (its controller unreachable over the network, say)
            code = self.process.wait()
        self.process = None
        self.output.seek(0)
        text = self.output.read().decode(errors="replace")
        self.output.close()
        return code, text

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self.output.close()
