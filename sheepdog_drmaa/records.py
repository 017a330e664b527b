"""What the user gets back about failed tasks: one record per task, with its attempt history."""
from __future__ import annotations

import linecache
import pickle
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

from .model import AttemptRecord
from .store import Store

MESSAGE_FAILURES = 20
STDERR_LINES = 10  # of a failed task's last attempt, in its description
# The cause of a task whose result arrived but cannot be loaded by the client (not an attempt's cause).
UNLOADABLE = "unloadable"


@dataclass
class TaskFailure:
    """A task that failed for good: where, with what, why, how often, and its remote traceback."""

    index: int
    args: Any
    cause: str
    attempts: int
    summary: str
    traceback: str | None = None
    exception: BaseException | None = None
    history: list[AttemptRecord] = field(default_factory=list)

    def describe(self) -> str:
        plural = "s" if self.attempts != 1 else ""
        text = (f"task {self.index} {_short_repr(self.args)}: {self.cause} after {self.attempts} attempt{plural}: "
                f"{self.summary}")
        if len(self.history) > 1:
            text += "\n    earlier attempts: " + "; ".join(
                f"#{a.number} {a.cause} ({a.detail.get('summary', '')})" for a in self.history[:-1])
        if self.traceback:
            text += "\n    " + self.traceback.rstrip().replace("\n", "\n    ")
        stderr = self.history[-1].stderr.rstrip() if self.history else ""
        if stderr:
            tail = stderr.splitlines()[-STDERR_LINES:]
            text += "\n    its stderr ended with:\n      " + "\n      ".join(tail)
        return text


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load(blob: bytes | None) -> Any:
    """Unpickle, or None when that fails (an exception class that only exists on the nodes, say)."""
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None


def failure_from_store(store: Store, sweep_id: str, index: int) -> TaskFailure:
    history = store.attempts(sweep_id, index)
    last = history[-1] if history else None
    _, error_blob = store.result(sweep_id, index)
    exception = _load(error_blob)
    args = _load(store.task_args(sweep_id, index))
    return TaskFailure(
        index=index,
        args=args,
        cause=(last.cause if last else None) or "unknown",
        attempts=len(history),
        summary=(last.detail.get("summary", "") if last else "") or "",
        traceback=(last.detail.get("traceback") if last else None) or None,
        exception=exception if isinstance(exception, BaseException) else None,
        history=history,
    )


def unloadable_failure(store: Store, sweep_id: str, index: int, error: BaseException) -> TaskFailure:
    """A task whose result is stored but cannot be unpickled in this process (a class missing here, say)."""
    failure = failure_from_store(store, sweep_id, index)
    failure.cause = UNLOADABLE
    failure.summary = (f"its result is stored but cannot be unpickled here: {type(error).__name__}: {error}; "
                       "load it where the classes it needs can be imported, with Sweep.open(name).results()")
    failure.traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    failure.exception = error
    return failure


_DYNAMIC_FRAME = re.compile(r'^(  File )"<dynamic-code>"(, line (\d+), in .*)$', re.M)


def with_source_file(traceback_text: str, filename: str | None) -> str:
    """A remote traceback with the frames of code that travelled by value named after ``filename``.

    cloudpickle 3 calls the file of a function it pickled by value (one defined in ``__main__``,
    say) "<dynamic-code>", so the node cannot show its lines. The client knows the file ``f`` came
    from: its frames get that name back, with their source lines read here.
    """
    if not filename or "<dynamic-code>" not in traceback_text:
        return traceback_text

    def named(match: re.Match[str]) -> str:
        line = linecache.getline(filename, int(match.group(3))).strip()
        return f'{match.group(1)}"{filename}"{match.group(2)}' + (f"\n    {line}" if line else "")
    return _DYNAMIC_FRAME.sub(named, traceback_text)


def render_failures(failures: list[TaskFailure], total: int) -> str:
    """The message of SweepFailed: each failed task (up to a limit) with its cause and traceback."""
    lines = [f"{len(failures)} of {total} tasks failed:"]
    lines += ["  " + failure.describe() for failure in failures[:MESSAGE_FAILURES]]
    if len(failures) > MESSAGE_FAILURES:
        lines.append(f"  ... and {len(failures) - MESSAGE_FAILURES} more (see .failures)")
    return "\n".join(lines)
