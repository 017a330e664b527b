"""The program a worker runs on an execution node: ``python -m sheepdog_drmaa.worker``.

It says hello to the server on the submit host, receives the function, then leases batches of
tasks, runs them in order, and reports their results or exceptions together with its next lease
(or earlier, when they grow large or old), until the server has no more work for it. A thread
sends heartbeats, naming the running task, while the worker holds tasks.

The work happens in a forked child. The parent only waits for it, so that whatever the function
does (``os._exit(99)`` included) the job never exits with a status Grid Engine treats specially,
and a child killed by a signal makes the job end by the same signal. The child keeps the task it
runs in memory shared with the parent: when the child dies mid-task (a crash, the kernel's OOM
killer), the parent tells the server which task that was, so that only that one is charged.

Start-up is on every task's path: standard library, cloudpickle and protocol only.
"""
from __future__ import annotations

import fcntl
import functools
import http.client
import mmap
import os
import resource
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any, Callable

import cloudpickle

from . import protocol
from .errors import ResultTooLarge

CONNECT_ATTEMPTS = 10
# A task running this long is named to the server at once, not at the next heartbeat.
ANNOUNCE_SECONDS = 1.0
# An exception's message and traceback are each cut to this many characters (head and tail kept).
MAX_EXCEPTION_TEXT = 64 * 1024
CONNECT_BACKOFF = 0.5


class ChannelError(Exception):
    """The server could not be reached or did not answer properly."""


class _Connection(http.client.HTTPConnection):
    """An HTTP connection whose socket never sits on descriptor 0, 1 or 2. A task may close those
    (as daemonising code does) while the heartbeat thread connects: its output would go into the
    request, and the streams put back after the task would replace the socket's descriptor."""

    def connect(self) -> None:
        super().connect()
        if self.sock.fileno() <= 2:
            low = self.sock
            self.sock = socket.socket(fileno=fcntl.fcntl(low.fileno(), fcntl.F_DUPFD_CLOEXEC, 3))
            self.sock.settimeout(low.gettimeout())
            low.close()


class Channel:
    """Signed requests to the server. The server closes each connection after its answer, and
    ``http.client`` opens a new one for the next call: no idle connection can go stale."""

    def __init__(self, url: str, key: bytes, worker_id: str, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "", parsed.port or 80
        self.key, self.worker_id, self.timeout = key, worker_id, timeout
        self.connection: _Connection | None = None

    def call(self, route: str, message: dict[str, Any], attempts: int = CONNECT_ATTEMPTS) -> dict[str, Any]:
        message = dict(message, worker=self.worker_id)
        body = protocol.encode(message)
        for attempt in range(attempts):
            try:
                return self._call_once(route, body)
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if attempt == attempts - 1:
                    raise ChannelError(
                        f"cannot reach the sheepdog server at {self.host}:{self.port}: {error}") from error
                time.sleep(CONNECT_BACKOFF * (attempt + 1))
        raise AssertionError("unreachable")

    def _call_once(self, route: str, body: bytes) -> dict[str, Any]:
        headers = protocol.signed_headers(self.key, route, body)
        nonce = headers[protocol.HEADER_NONCE]
        headers["Content-Type"] = "application/octet-stream"
        if self.connection is None:
            self.connection = _Connection(self.host, self.port, timeout=self.timeout)
        self.connection.request("POST", route, body=body, headers=headers)
        response = self.connection.getresponse()
        reply = response.read()
        if response.status != 200:
            raise ChannelError(f"the server refused {route}: HTTP {response.status} {reply[:200]!r}")
        expected = protocol.response_signature(self.key, nonce, reply)
        if not protocol.signature_matches(expected, response.getheader(protocol.HEADER_SIGNATURE)):
            raise ChannelError(f"the answer to {route} is not signed with this sweep's key")
        return protocol.decode(reply)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


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


class Outbox:
    """Reports of finished tasks not sent yet. They go with the next lease, or before it: from the
    main thread when they grow large or old, and from the heartbeat thread while a later task runs
    long, so that a task that hangs (or is killed for it) does not take its batch's finished
    results with it. One sender at a time, so that a lease never overtakes reports sent before it
    (the server would take the tasks still held as a lease whose answer was lost)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()      # guards the reports
        self.sending = threading.Lock()   # held by whoever sends some
        self.reports: list[dict[str, Any]] = []
        self.size = 0
        self.oldest = 0.0

    def add(self, report: dict[str, Any]) -> None:
        with self.lock:
            self.reports.append(report)
            self.size += _report_size(report)
            self.oldest = self.oldest or time.monotonic()

    def due(self) -> bool:
        """Large or old enough to be sent before the batch ends."""
        with self.lock:
            return bool(self.reports) and (self.size >= protocol.REPORT_FLUSH_BYTES
                                           or time.monotonic() - self.oldest >= protocol.REPORT_FLUSH_SECONDS)

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            reports, self.reports, self.size, self.oldest = self.reports, [], 0, 0.0
        return reports

    def put_back(self, reports: list[dict[str, Any]]) -> None:
        """Reports whose sending failed: they go again, first."""
        with self.lock:
            self.reports[:0] = reports
            self.size += sum(_report_size(report) for report in reports)
            self.oldest = time.monotonic()


class Heartbeat:
    """Tells the server, every ``interval`` seconds while a task runs, which one it is and for how
    long it has run; a later task of a batch running longer than ANNOUNCE_SECONDS is named at once
    (the server takes the first as started when it answers the lease). Reports waiting in the
    outbox go just before.

    If the server stays unreachable for ``give_up_after`` seconds (its client died), the server
    has written this worker's tasks off as lost anyway, so the worker ends itself rather than burn
    a slot.
    """

    def __init__(self, channel: Channel, interval: float, give_up_after: float, running: RunningTask,
                 outbox: Outbox) -> None:
        self.channel, self.interval, self.give_up_after = channel, interval, give_up_after
        self.running, self.outbox = running, outbox
        thread = threading.Thread(target=self._run, name="sheepdog-heartbeat", daemon=True)
        thread.start()

    def _run(self) -> None:
        last_reached = last_sent = time.monotonic()
        announced: tuple[int, int] | None = None
        while True:
            time.sleep(min(self.interval, ANNOUNCE_SECONDS))
            now = time.monotonic()
            current = self.running.now
            if current is None:
                last_reached = now
                continue
            task, number, started, server_knows = current
            due = now - last_sent >= self.interval
            if not due and (server_knows or (task, number) == announced or now - started < ANNOUNCE_SECONDS):
                continue
            last_sent = now
            try:
                self._send_outbox()
                self.channel.call(protocol.ROUTE_HEARTBEAT, {
                    "running": {"task": task, "number": number, "elapsed": now - started}}, attempts=1)
                last_reached, announced = now, (task, number)
            except ChannelError as error:
                if now - last_reached > self.give_up_after:
                    print(f"sheepdog worker: giving up, the server has been unreachable for "
                          f"{self.give_up_after:g} s: {error}", file=sys.stderr, flush=True)
                    os._exit(protocol.EXIT_SERVER_UNREACHABLE)

    def _send_outbox(self) -> None:
        with self.outbox.sending:
            reports = self.outbox.take()
            if reports:
                try:
                    self.channel.call(protocol.ROUTE_REPORT, {"reports": reports}, attempts=1)
                except ChannelError:
                    self.outbox.put_back(reports)
                    raise


def call_function(function: Callable[..., Any], item: Any) -> Any:
    """Tuples are unpacked into arguments; anything else is the single argument."""
    if isinstance(item, tuple):
        return function(*item)
    return function(item)


@functools.cache  # loaded once per process: it is asked after every task
def _libc() -> Any:
    """This process's C library through ctypes (imported only when first needed), or None."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _flush_c_streams() -> None:
    """Flush C's stdio buffers too (printf from an extension is block-buffered into a file)."""
    libc = _libc()
    if libc is not None:  # without one, what C code printed arrives when the worker exits
        libc.fflush(None)


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

    def run(self, task: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``task()``'s report, with the output it made under "output"."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        starts = {name: self._end(descriptor) for name, (descriptor, _) in self.readers.items()}
        report = task()
        for descriptor, copy in self.saved.items():
            os.dup2(copy, descriptor)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _flush_c_streams()
        report["output"] = {name: self._read(reader, starts[name], self._end(descriptor))
                            for name, (descriptor, reader) in self.readers.items()}
        return report

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


def run_task(function: Callable[..., Any], lease: dict[str, Any], max_result_size: int) -> dict[str, Any]:
    """Run one leased task; return the report for the server.

    A result whose pickle is larger than ``max_result_size`` is not sent: the task fails with
    ResultTooLarge instead, which names the option (the server would refuse the body anyway).
    """
    report: dict[str, Any] = {"task": lease["task"], "number": lease["number"]}
    started, before = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    try:
        item = cloudpickle.loads(lease["args"])
        value = call_function(function, item)
        pickled = cloudpickle.dumps(value, protocol=5)
        del value
        if len(pickled) > max_result_size:
            raise ResultTooLarge(f"the result of task {lease['task']} is {len(pickled):,} bytes pickled, more than "
                                 f"max_result_size={max_result_size:,}; raise that option, or write large "
                                 "results to a shared file and return its path")
        report["result"] = pickled
    except BaseException as error:  # SystemExit and KeyboardInterrupt from f are task failures too
        report["exception"] = describe_exception(error, max_result_size)
    after = resource.getrusage(resource.RUSAGE_SELF)
    report["usage"] = {
        "seconds": time.time() - started,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "max_rss_kb": after.ru_maxrss,  # the worker process's high-water mark so far
    }
    return report


def describe_exception(error: BaseException, max_size: int) -> dict[str, Any]:
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
    return {
        "types": [protocol.qualified_name(cls) for cls in type(error).__mro__],
        "type": type(error).__qualname__,
        "message": _head_and_tail(message),
        "traceback": _head_and_tail(formatted),
        "pickle": pickled,
    }


def _head_and_tail(text: str, limit: int = MAX_EXCEPTION_TEXT) -> str:
    """``text``, or its beginning and end if it is longer than ``limit`` characters (a report must fit)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters left out ...]\n{text[-half:]}"


def _user_frames(tb: Any) -> Any:
    """The traceback without this module's own frames, so it starts where f was called."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def worker_id_from_environment() -> str:
    """The scheduler's id of this worker, as DRMAA gave it to the client: set by the local backend,
    Slurm's array job and task ids ('238_4'), or Grid Engine's ('49.3').

    Slurm is asked first: it copies the submitting shell's environment into the job, and with it
    any JOB_ID that shell had; Grid Engine's DRMAA jobs get only the variables they are given.
    """
    explicit = os.environ.get(protocol.ENV_WORKER_ID)
    if explicit:
        return explicit
    slurm_job, slurm_task = os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if slurm_job and slurm_task:
        return f"{slurm_job}_{slurm_task}"
    job, task = os.environ.get("JOB_ID", ""), os.environ.get("SGE_TASK_ID", "undefined")
    if not job:
        raise KeyError("none of SHEEPDOG_WORKER_ID, SLURM_ARRAY_JOB_ID and JOB_ID is set")
    return job if task in ("", "undefined") else f"{job}.{task}"


def _report_size(report: dict[str, Any]) -> int:
    """About how many bytes a report adds to a request."""
    exception = report.get("exception") or {}
    output = report.get("output") or {}
    return (256 + len(report.get("result") or b"") + len(exception.get("pickle") or b"")
            + len(exception.get("traceback", "")) + sum(len(text) for text in output.values()))


def say_hello(channel: Channel) -> dict[str, Any]:
    """The server's answer to this worker's hello, asking again while the server says its id is
    not known yet (the client is still registering the submission this worker came from)."""
    deadline = time.monotonic() + protocol.HELLO_RETRY_LIMIT
    while True:
        hello = channel.call(protocol.ROUTE_HELLO, {"host": os.uname().nodename, "process_group": os.getpgid(0)})
        retry = hello.get("retry")
        if hello.get("accepted") or not isinstance(retry, (int, float)) or time.monotonic() > deadline:
            return hello
        time.sleep(retry)


def serve(shared: mmap.mmap | None = None) -> int:
    """Lease and run tasks until the server has none left; return the exit status.

    ``shared``: memory the parent reads, should this process die, to learn which task it ran.
    """
    try:
        url = os.environ[protocol.ENV_URL]
        key = protocol.read_key_file(os.environ[protocol.ENV_KEY_FILE])
        worker_id = worker_id_from_environment()
    except (KeyError, OSError, ValueError) as error:
        print(f"sheepdog worker: incomplete configuration: {error!r}", file=sys.stderr)
        return protocol.EXIT_BAD_CONFIGURATION
    channel = Channel(url, key, worker_id)
    try:
        hello = say_hello(channel)
        if not hello.get("accepted"):
            return protocol.EXIT_OK
        try:
            function, namespace = cloudpickle.loads(hello["function"])
        except Exception as error:  # f's module is not importable here, most often
            described = describe_exception(error, hello["max_result_size"])
            print(f"sheepdog worker {worker_id}: cannot load the function:\n{described['traceback']}",
                  file=sys.stderr)
            channel.call(protocol.ROUTE_SETUP_FAILED, {"error": described})
            return protocol.EXIT_BAD_CONFIGURATION
        if namespace:
            getattr(function, "__globals__", {}).update(namespace)
        running, outbox = RunningTask(shared), Outbox()
        Heartbeat(Channel(url, key, worker_id), hello["heartbeat_interval"], hello["heartbeat_timeout"], running,
                  outbox)
        output = CapturedOutput(hello["output_limit"])
        while True:
            with outbox.sending:
                batch = channel.call(protocol.ROUTE_LEASE, {"reports": outbox.take()}).get("leases") or []
            if not batch:
                return protocol.EXIT_OK
            for position, lease in enumerate(batch):
                running.start(lease["task"], lease["number"], server_knows=position == 0)
                outbox.add(output.run(functools.partial(run_task, function, lease, hello["max_result_size"])))
                running.stop()
                if position + 1 < len(batch) and outbox.due():
                    with outbox.sending:
                        channel.call(protocol.ROUTE_REPORT, {"reports": outbox.take()})
    except ChannelError as error:
        print(f"sheepdog worker {worker_id}: {error}", file=sys.stderr)
        return protocol.EXIT_SERVER_UNREACHABLE


TASK_DIED_TIMEOUT = 5.0


def tell_task_died(task: int, number: int, peak_rss_kb: int) -> None:
    """Tell the server which task the child was running as it died (and the child's peak memory),
    so that the job's ending is charged to that task alone. Best effort and brief: the job must end."""
    try:
        channel = Channel(os.environ[protocol.ENV_URL], protocol.read_key_file(os.environ[protocol.ENV_KEY_FILE]),
                          worker_id_from_environment(), timeout=TASK_DIED_TIMEOUT)
        channel.call(protocol.ROUTE_TASK_DIED, {"task": task, "number": number, "max_rss_kb": peak_rss_kb},
                     attempts=2)
    except (KeyError, OSError, ValueError, ChannelError) as error:
        print(f"sheepdog worker: could not tell the server that task {task} died: {error}", file=sys.stderr)


def safe_status(status: int) -> int:
    return protocol.EXIT_RESERVED_STATUS if status in protocol.GRID_ENGINE_RESERVED else status


PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
LEFTOVER_KILL_SECONDS = 5.0


def become_subreaper() -> None:
    """Have orphaned descendants (f's daemons, setsid'd or not) reparented to this process, not init.

    Linux only; elsewhere they still escape to init.
    """
    libc = _libc()
    try:
        if libc is not None:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except AttributeError:  # no prctl in this C library
        pass


def children() -> list[int]:
    """This process's children, read from /proc (``/proc/PID/task/TID/children`` is often not built in)."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    parent = handle.read().rsplit(b")", 1)[1].split()[1]  # the command name may hold ")"
            except (OSError, IndexError):
                continue
            if int(parent) == me:
                found.append(int(name))
    return found


def end_descendants() -> None:
    """SIGKILL and reap every process left below this one: for a subreaper, the whole tree.

    A killed child's children are reparented here, so repeat until none is left. Children that are
    not yet reaped cannot be replaced by another process under the same pid, so no stranger is hit.
    """
    deadline = time.monotonic() + LEFTOVER_KILL_SECONDS
    try:
        while True:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
            if time.monotonic() > deadline:
                return
            for pid in children():
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    except ChildProcessError:
        return  # no child left
    except OSError as error:  # no /proc here, say
        print(f"sheepdog worker: cannot end the processes the task left behind: {error}", file=sys.stderr)


def main() -> None:
    """Fork; the child serves, the parent passes the child's ending on in a form Grid Engine takes.

    The parent is a child subreaper and kills whatever the child left behind (processes that f
    forked, setsid'd or not) before it exits, also when a catchable signal (SIGTERM, or the
    SIGUSR2 that ``qsub -notify`` sends ahead of a deletion) ended the child. Grid Engine itself
    (SGE 8.1.9, measured) kills only the job's process group, on ``qdel`` and when the job exits:
    with its default ``execd_params`` a setsid'd grandchild survives both; ``ENABLE_ADDGRP_KILL=true``
    makes it kill every process carrying the job's additional group id. A qdel without -notify is
    a SIGKILL, which leaves this parent no chance to clean up.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    become_subreaper()
    shared = RunningTask.shared_slot()
    pid = os.fork()
    if pid == 0:
        status = protocol.EXIT_BAD_CONFIGURATION
        try:
            status = serve(shared)
        except BaseException:  # a bug here, or no memory left: say what it was before the exit status does
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(safe_status(status))

    def forward(signum: int, frame: Any) -> None:
        """Pass a signal sent to the job (by qdel, -notify or a limit) on to the child."""
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # the same signal, sent to the whole group, ended the child just now
            pass

    forwarded = [getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")]
    for signum in forwarded:
        signal.signal(signum, forward)
    while True:  # reaping orphans as they end too, so that none stays a zombie for long
        try:
            ended, wait_status, usage = os.wait4(-1, 0)
        except InterruptedError:
            continue
        if ended == pid:
            break
    for signum in forwarded:  # the child is gone (its pid may be reused): finish the clean-up
        signal.signal(signum, signal.SIG_IGN)
    end_descendants()
    died_running = RunningTask.read_slot(shared)
    if died_running is not None:
        tell_task_died(*died_running, peak_rss_kb=usage.ru_maxrss)
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default action anyway
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # only reached for a signal whose default action is to carry on
    os._exit(safe_status(os.waitstatus_to_exitcode(wait_status)))


if __name__ == "__main__":
    main()
