"""Running one leased task in the worker: load its argument, call f, keep what it printed, and
build the report for the server; and the record of which task runs now.

Standard library, cloudpickle, protocol, messages and errors only.
"""
from __future__ import annotations

import functools
import mmap
import os
import resource
import stat
import struct
import sys
import time
import traceback
from typing import Any, Callable

import cloudpickle

from .. import messages, protocol
from ..errors import ResultTooLarge

# An exception's message and traceback are each cut to this many characters (head and tail kept).
MAX_EXCEPTION_TEXT = 64 * 1024
_PACKAGE = os.path.dirname(__file__)


class RunningTask:
    """The task the worker runs now: read by the heartbeat thread, and by the parent process
    (through memory shared across the fork) if this process dies."""

    _SLOT = struct.Struct("<qq")

    def __init__(self, shared: mmap.mmap | None) -> None:
        self.shared = shared
        # task, attempt number, monotonic start, and whether the server knows it runs it
        self.now: tuple[int, int, float, bool] | None = None

    def start(self, task: int, number: int, server_knows: bool) -> None:
        """``server_knows``: the task is the first of its batch, which the server takes as started."""
        if self.shared is not None:
            self._SLOT.pack_into(self.shared, 0, task, number)
        self.now = (task, number, time.monotonic(), server_knows)

    def stop(self) -> None:
        self.now = None
        if self.shared is not None:
            self._SLOT.pack_into(self.shared, 0, -1, -1)

    @classmethod
    def shared_slot(cls) -> mmap.mmap:
        """Memory for the task being run, shared with a child forked after this call; no task yet."""
        shared = mmap.mmap(-1, cls._SLOT.size)
        cls._SLOT.pack_into(shared, 0, -1, -1)
        return shared

    @classmethod
    def read_slot(cls, shared: mmap.mmap) -> tuple[int, int] | None:
        task, number = cls._SLOT.unpack_from(shared, 0)
        return None if task < 0 else (task, number)


@functools.cache  # loaded once per process: it is asked after every task
def libc() -> Any:
    """This process's C library through ctypes (imported only when first needed), or None."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _flush_c_streams() -> None:
    """Flush C's stdio buffers too (printf from an extension is block-buffered into a file)."""
    found = libc()
    if found is not None:  # without one, what C code printed arrives when the worker exits
        found.fflush(None)


class CapturedOutput:
    """What each task printed, cut out of the worker's own log files.

    The scheduler points the worker's stdout and stderr at files, and whatever the task writes
    there (prints from C extensions and subprocesses too) lands in them as it is written, so it
    is still there if the task is killed midway. After each task the part of each file that the
    task added is read back through a second descriptor, and its head and tail, at most ``limit``
    bytes, go to the server with the report. A stream that is not a regular file (a terminal, a
    pipe) is not captured; stderr merged into stdout (one file) is reported once, as stdout.

    Descriptors 0 to 2 are put back as they were after each task, should it have closed or replaced
    them (as daemonising code does): its report is still made, and the next task prints as usual.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.readers: dict[str, tuple[int, int]] = {}  # stream name -> (its descriptor, a reader of its file)
        self.saved: dict[int, int] = {}  # standard descriptor -> a copy of it, to put back after each task
        for descriptor in (0, 1, 2):
            try:
                self.saved[descriptor] = os.dup(descriptor)
            except OSError:
                continue  # closed from the start: nothing to put back
        seen = set()
        for name, descriptor in (("stdout", 1), ("stderr", 2)):
            try:
                status = os.fstat(descriptor)
                if stat.S_ISREG(status.st_mode) and (status.st_dev, status.st_ino) not in seen:
                    self.readers[name] = (descriptor, os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY))
                    seen.add((status.st_dev, status.st_ino))
            except OSError:
                continue  # not capturable here: the task's output stays in the stream alone

    def run(self, task: Callable[[], messages.Report]) -> messages.Report:
        """``task()``'s report, with the output it made."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        starts = {name: self._end(descriptor) for name, (descriptor, _) in self.readers.items()}
        report = task()
        for descriptor, copy in self.saved.items():
            os.dup2(copy, descriptor)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _flush_c_streams()
        texts = {name: self._read(reader, starts[name], self._end(descriptor))
                 for name, (descriptor, reader) in self.readers.items()}
        return report._replace(output=messages.Output(**texts))

    @staticmethod
    def _end(descriptor: int) -> int:
        return os.fstat(descriptor).st_size

    def _read(self, reader: int, start: int, end: int) -> str:
        size = max(end - start, 0)
        if size <= self.limit:
            return os.pread(reader, size, start).decode(errors="replace")
        half = self.limit // 2
        head, tail = os.pread(reader, half, start), os.pread(reader, half, end - half)
        return (head.decode(errors="replace") + f"\n[... {size - 2 * half:,} bytes left out ...]\n"
                + tail.decode(errors="replace"))


def call_function(function: Callable[..., Any], item: Any) -> Any:
    """Tuples are unpacked into arguments; anything else is the single argument."""
    if isinstance(item, tuple):
        return function(*item)
    return function(item)


def run_task(function: Callable[..., Any], lease: messages.LeasedTask, max_result_size: int) -> messages.Report:
    """Run one leased task; return the report for the server.

    A result whose pickle is larger than ``max_result_size`` is not sent: the task fails with
    ResultTooLarge instead, which names the option (the server would refuse the body anyway).
    """
    result: bytes | None = None
    exception: messages.ExceptionInfo | None = None
    started, before = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    try:
        item = cloudpickle.loads(lease.args)
        value = call_function(function, item)
        pickled = cloudpickle.dumps(value, protocol=5)
        del value
        if len(pickled) > max_result_size:
            raise ResultTooLarge(f"the result of task {lease.task} is {len(pickled):,} bytes pickled, more than "
                                 f"max_result_size={max_result_size:,}; raise that option, or write large "
                                 "results to a shared file and return its path")
        result = pickled
    except BaseException as error:  # SystemExit and KeyboardInterrupt from f are task failures too
        exception = describe_exception(error, max_result_size)
    after = resource.getrusage(resource.RUSAGE_SELF)
    usage = {
        "seconds": time.time() - started,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "max_rss_kb": after.ru_maxrss,  # the worker process's high-water mark so far
    }
    return messages.Report(lease.task, lease.number, result=result, exception=exception, usage=usage)


def describe_exception(error: BaseException, max_size: int) -> messages.ExceptionInfo:
    """The exception as the server records it; its pickle is left out if it fails or is too large."""
    try:
        pickled: bytes | None = cloudpickle.dumps(error, protocol=5)
    except Exception:
        pickled = None
    if pickled is not None and len(pickled) > max_size:
        pickled = None
    try:
        message = str(error)
    except Exception as unprintable:
        message = f"(str() of the exception failed: {type(unprintable).__name__})"
    formatted = "".join(traceback.format_exception(type(error), error, _user_frames(error.__traceback__)))
    return messages.ExceptionInfo(types=[protocol.qualified_name(cls) for cls in type(error).__mro__],
                                  type=type(error).__qualname__, message=_head_and_tail(message),
                                  traceback=_head_and_tail(formatted), pickle=pickled)


def _head_and_tail(text: str, limit: int = MAX_EXCEPTION_TEXT) -> str:
    """``text``, or its beginning and end if it is longer than ``limit`` characters (a report must fit)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters left out ...]\n{text[-half:]}"


def _user_frames(tb: Any) -> Any:
    """The traceback without the worker's own frames, so it starts where f (or loading it) was called."""
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _PACKAGE:
        tb = tb.tb_next
    return tb
