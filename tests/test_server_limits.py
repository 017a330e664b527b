"""The task server under attack by anyone who reaches its port: memory, threads, descriptors, logs.

Attacks run against a server in a child process, so that its memory and threads are measured
from /proc apart from the test's own; signed requests go through the worker's real Channel.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import pytest
from helpers import wait_until
from untyped import untyped_app

from sheepdog_drmaa import messages, protocol
from sheepdog_drmaa.server import MAX_BODY, TaskServer, Warnings, make_app
from sheepdog_drmaa.worker.channel import CONNECT_BACKOFF, Channel, ChannelError

KEY = b"k" * 32
MB = 1 << 20
TESTS = os.path.dirname(os.path.abspath(__file__))

SERVER_SCRIPT = """
import json, os, resource, sys, threading
from sheepdog_drmaa.server import TaskServer

config = json.loads(sys.argv[1])
sys.path.insert(0, config["tests"])
from untyped import untyped_app
if config.get("open_files"):
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"], config["open_files"]))
held = []

def hog(message):
    # In a while (once this answer is sent), hold every free descriptor until told to let go.
    def hold():
        try:
            while True:
                held.append(open(os.devnull))
        except OSError:
            pass
    threading.Timer(0.2, hold).start()
    return {}

def open_files(message):
    # Raises "too many open files" if the process is out of descriptors.
    files = [open(os.devnull) for _ in range(message["count"])]
    for f in files:
        f.close()
    return {"opened": len(files)}

handlers = {"/hello": lambda message: {"echo": message.get("value")}, "/hog": hog, "/open": open_files}
server = TaskServer(untyped_app(b"k" * 32, handlers), "127.0.0.1", 0)
print(server.port, flush=True)
for line in sys.stdin:  # "release": let the held descriptors go; the end of input: exit
    for handle in held:
        handle.close()
    held.clear()
"""


class Child:
    """A task server in a child process, and what /proc says about it."""

    def __init__(self, **config: Any) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, json.dumps(dict(config, tests=TESTS))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def status(self, field: str) -> float:
        """A number from /proc/PID/status: Threads, or VmRSS / VmHWM in MB."""
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    value = int(line.split()[1])
                    return value if field == "Threads" else value / 1024
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def release(self) -> None:
        """Let the descriptors /hog holds go."""
        assert self.process.stdin is not None
        self.process.stdin.write("release\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def start(**config: Any) -> Child:
        children.append(Child(**config))
        return children[-1]

    yield start
    for started in children:
        started.stop()


@pytest.fixture
def served() -> Iterator[Callable[..., TaskServer]]:
    servers: list[TaskServer] = []

    def serve(handlers: Mapping[str, Any] | None = None, typed: bool = False, **options: Any) -> TaskServer:
        """A server of ``handlers``: of the routes' own messages if ``typed``, else of plain dicts."""
        handlers = handlers or {protocol.ROUTE_HELLO: lambda message: {"echo": message.get("value")}}
        app = (make_app if typed else untyped_app)(KEY, handlers, max_body=options.pop("max_body", MAX_BODY))
        servers.append(TaskServer(app, "127.0.0.1", 0, **options))
        return servers[-1]

    yield serve
    for server in servers:
        server.stop()


def channel(port: int, timeout: float = 5.0) -> Channel:
    """The worker's Channel, with a short timeout instead of its 60 s."""
    result = Channel(f"http://127.0.0.1:{port}", KEY, "w1")
    # A plain HTTPConnection where the channel keeps its own _Connection (the type it declares).
    result.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)  # type: ignore[assignment]
    return result


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing, opened no faster than the server accepts them (a
    connection that finds the listen backlog full waits a second for its SYN to be sent again)."""
    sockets: list[socket.socket] = []
    for number in range(count):
        if number % 64 == 0:
            wait_until(lambda: accept_queue(port) < 32, 10, "the server to accept connections")
        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return sockets


def accept_queue(port: int) -> int:
    """How many connections wait in the backlog of the listening socket on ``port``."""
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            _, local, _, state, queues = line.split()[:5]
            if local.endswith(f":{port:04X}") and state == "0A":  # LISTEN; its receive queue is the backlog
                return int(queues.split(":")[1], 16)
    raise LookupError(f"nothing listens on port {port}")


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> int | None:
    """Send ``head`` (request line and headers) and ``body``; the status of the answer, or None if the
    server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        except OSError:
            pass  # the server may refuse before the body is all sent
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (OSError, http.client.HTTPException):
            return None
        return response.status


def signed_head(route: str, body: bytes, key: bytes = KEY, nonce: str | None = None, timestamp: str | None = None,
                length: int | None = None) -> str:
    nonce, timestamp = nonce or protocol.new_nonce(), timestamp or repr(time.time())
    length = len(body) if length is None else length
    return (f"POST {route} HTTP/1.1\r\nContent-Length: {length}\r\n"
            f"{protocol.HEADER_NONCE}: {nonce}\r\n{protocol.HEADER_TIME}: {timestamp}\r\n"
            f"{protocol.HEADER_HEAD_SIGNATURE}: {protocol.head_signature(key, route, nonce, timestamp, length)}\r\n"
            f"{protocol.HEADER_SIGNATURE}: {protocol.request_signature(key, route, nonce, timestamp, body)}\r\n")


def send_unsigned_body(port: int, size: int, chunked: bool = False) -> None:
    """What an attacker without the key does: post a large body, 1 MB at a time, until refused."""
    chunk = b"x" * MB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        try:
            sock.sendall(f"POST /hello HTTP/1.1\r\n{framing}\r\n\r\n".encode())
            for _ in range(size // MB):
                sock.sendall(b"100000\r\n" + chunk + b"\r\n" if chunked else chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            sock.recv(100)
        except OSError:
            pass  # refused and closed before the body was all sent


# -- item 5: nobody without the key makes the server read a body ------------------------------


def peak_growth(server: Child, senders: list[Callable[[], None]]) -> float:
    """How much the server's peak RSS grew, in MB, while ``senders`` ran at once (each in a thread)."""
    before = server.status("VmHWM")
    threads = [threading.Thread(target=send) for send in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    growth = server.status("VmHWM") - before
    print(f"peak RSS growth of the server: {growth:.1f} MB")
    return growth


@pytest.mark.parametrize("clients, size, chunked", [(5, 100 * MB, False), (1, 300 * MB, True)],
                         ids=["five-100MB-bodies", "chunked-300MB-body"])
def test_unsigned_bodies_do_not_raise_the_servers_memory(child: Callable[..., Child], clients: int, size: int,
                                                         chunked: bool) -> None:
    server = child()
    growth = peak_growth(server, [lambda: send_unsigned_body(server.port, size, chunked)] * clients)
    assert growth < 30, f"{clients} unsigned {size // MB} MB bodies raised the server's peak RSS by {growth:.0f} MB"


def test_unsigned_headers_do_not_raise_the_servers_memory(child: Callable[..., Child]) -> None:
    def send_long_headers() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            try:
                sock.sendall(b"POST /hello HTTP/1.1\r\n")
                for number in range(100):  # as many as http.server takes, each as long as it takes
                    sock.sendall(b"X-%d: %s\r\n" % (number, b"x" * 65000))
                sock.recv(100)
            except OSError:
                pass  # refused and closed before the headers were all sent

    server = child()
    growth = peak_growth(server, [send_long_headers] * 50)
    assert growth < 30, f"50 requests with 6.5 MB of headers raised the server's peak RSS by {growth:.0f} MB"


def test_an_unsigned_request_is_refused_before_its_body_arrives(served: Callable[..., TaskServer]) -> None:
    server = served()
    # The body never comes: the answer must not wait for it.
    status = raw_request(server.port, "POST /hello HTTP/1.1\r\nContent-Length: 1000\r\n", timeout=3)
    assert status == 403


@pytest.mark.parametrize("head, body, status", [
    (lambda: "POST /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 411),
    (lambda: "POST /hello HTTP/1.1\r\n", b"", 411),
    (lambda: "POST /hello HTTP/1.1\r\nContent-Length: -5\r\n", b"", 411),
    (lambda: signed_head("/hello", b"x" * 5000), b"x" * 5000, 413),
    (lambda: signed_head("/hello", b"body", key=b"x" * 32), b"body", 403),
    (lambda: signed_head("/hello", b"body"), b"BODY", 403),
    (lambda: signed_head("/hello", b"body", length=3), b"bod", 403),
    (lambda: signed_head("/hello", b"body", timestamp="nan"), b"body", 409),
    (lambda: signed_head("/hello", b"body", nonce="not-hex-" * 4), b"body", 409),
], ids=["chunked", "no-length", "bad-length", "too-large", "wrong-key", "other-body", "other-length",
        "nan-time", "bad-nonce"])
def test_refused_before_the_handler(served: Callable[..., TaskServer], head: Callable[[], str], body: bytes,
                                    status: int) -> None:
    calls: list[dict[str, Any]] = []

    def record(message: dict[str, Any]) -> dict[str, Any]:
        calls.append(message)
        return {}
    server = served({"/hello": record}, max_body=1000)
    assert raw_request(server.port, head(), body) == status
    assert calls == []


def test_a_worker_with_too_large_a_body_is_told_so(served: Callable[..., TaskServer]) -> None:
    server = served(max_body=1000)
    with pytest.raises(ChannelError, match="HTTP 413"):
        channel(server.port).call(protocol.ROUTE_HELLO, {"value": b"x" * 5000}, attempts=1)


# -- item 6: connections cannot pin threads or use up descriptors -----------------------------


def test_idle_connections_do_not_pin_threads_and_workers_still_get_in(child: Callable[..., Child]) -> None:
    server = child()
    threads_before, rss_before = server.status("Threads"), server.status("VmRSS")
    idle = open_idle(server.port, 1500)
    try:
        started = time.monotonic()
        assert channel(server.port).call(protocol.ROUTE_HELLO, {"value": 1}, attempts=1) == {"echo": 1}
        answered = time.monotonic() - started
        threads, rss = server.status("Threads"), server.status("VmRSS")
    finally:
        for sock in idle:
            sock.close()
    print(f"threads {threads_before} -> {threads}, RSS {rss_before:.0f} -> {rss:.0f} MB, answered in {answered:.2f} s")
    assert threads - threads_before <= 300
    assert rss - rss_before < 40
    assert answered < 2


def test_idle_connections_cannot_use_up_the_descriptors(child: Callable[..., Child]) -> None:
    server = child(open_files=1024)  # the usual limit, and no higher hard limit to raise it to
    idle = open_idle(server.port, 1100)
    try:
        assert channel(server.port).call("/open", {"count": 200}, attempts=1) == {"opened": 200}
    finally:
        for sock in idle:
            sock.close()


def test_out_of_descriptors_the_server_neither_dies_nor_spins(child: Callable[..., Child]) -> None:
    server = child(open_files=256)
    channel(server.port).call("/hog", {}, attempts=1)
    wait_until(lambda: len(os.listdir(f"/proc/{server.process.pid}/fd")) >= 250, 5, "the descriptors held")
    cpu_before, started = server.cpu_seconds(), time.monotonic()
    answer: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: answer.update(  # its timeout covers the held second and the release
        channel(server.port, timeout=30).call(protocol.ROUTE_HELLO, {"value": 2}, attempts=1)))
    caller.start()
    caller.join(1.0)  # accepting fails while the descriptors are held: no answer can come
    waited, cpu = time.monotonic() - started, server.cpu_seconds() - cpu_before
    print(f"no answer while out of descriptors for {waited:.2f} s, using {cpu:.2f} s of CPU")
    assert caller.is_alive() and not answer
    assert cpu < 0.3 * waited  # it does not spin on the failing accept
    server.release()
    caller.join(40)
    assert answer == {"echo": 2}  # it did not die: the connection waiting is answered


def test_a_connection_without_signed_headers_is_closed_at_its_deadline(served: Callable[..., TaskServer]) -> None:
    server = served(header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        try:
            for byte in b"POST /hello HTTP/1.1\r\nX-Slow: " + b"x" * 100:  # a slow trickle of header
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            closed = sock.recv(100) == b""
        except OSError:
            closed = True
        assert closed
        assert time.monotonic() - started < 2


def test_strangers_are_dropped_oldest_first_and_workers_keep_their_connections(
        served: Callable[..., TaskServer]) -> None:
    gate, entered = threading.Event(), threading.Event()

    def slow(message: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        gate.wait(10)
        return {"done": True}

    server = served({"/slow": slow, protocol.ROUTE_HELLO: lambda message: {}}, max_connections=8)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(channel(server.port).call("/slow", {}, attempts=1)))
    worker.start()
    assert entered.wait(5)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(10)]
    try:
        # At most two (a quarter of 8) unsigned connections are kept: all but the newest are closed.
        wait_until(lambda: sum(_closed_by_server(sock) for sock in idle) >= 8, 5, "old idle connections closed")
        assert channel(server.port).call(protocol.ROUTE_HELLO, {}, attempts=1) == {}
    finally:
        gate.set()
        for sock in idle:
            sock.close()
    worker.join(5)
    assert result == {"done": True}


def test_when_workers_hold_every_connection_newcomers_are_turned_away_at_once(
        served: Callable[..., TaskServer]) -> None:
    gate, entered = threading.Event(), threading.Semaphore(0)

    def slow(message: dict[str, Any]) -> dict[str, Any]:
        entered.release()
        gate.wait(10)
        return {}

    server = served({"/slow": slow, protocol.ROUTE_HELLO: lambda message: {}}, max_connections=4)
    workers = [threading.Thread(target=channel(server.port).call, args=("/slow", {}), kwargs={"attempts": 1})
               for _ in range(4)]
    for worker in workers:  # one at a time: a quarter of 4 connections may be unsigned
        worker.start()
        assert entered.acquire(timeout=5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            wait_until(lambda: _closed_by_server(sock), 3, "the newcomer turned away")
    finally:
        gate.set()
        for worker in workers:
            worker.join(5)

    def newcomer_served() -> bool:
        try:
            return channel(server.port).call(protocol.ROUTE_HELLO, {}, attempts=1) == {}
        except ChannelError:  # the holders' connections are closed, but the server may not have seen it yet
            return False
    wait_until(newcomer_served, 10, "a newcomer to be served once the holders let go")


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_worker_idle_past_the_header_timeout_calls_again_at_once(served: Callable[..., TaskServer]) -> None:
    server = served(header_timeout=1.5)  # ample for a loaded machine to answer a fresh connection within
    worker = channel(server.port)
    worker.call(protocol.ROUTE_HELLO, {}, attempts=1)
    time.sleep(2.0)  # a task runs; any connection left open would be closed meanwhile
    started = time.monotonic()
    worker.call(protocol.ROUTE_HELLO, {}, attempts=2)
    assert time.monotonic() - started < CONNECT_BACKOFF  # the call did not fail and wait to retry


def test_the_open_files_limit_is_raised_to_the_hard_limit(served: Callable[..., TaskServer]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        served()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- item 7: quiet logs, finite timestamps, well-formed messages ------------------------------


def test_refusals_are_logged_once_then_counted(served: Callable[..., TaskServer],
                                               caplog: pytest.LogCaptureFixture) -> None:
    server = served()
    caplog.set_level(logging.DEBUG, logger="sheepdog_drmaa.server")
    for _ in range(500):
        assert raw_request(server.port, "POST /hello HTTP/1.1\r\nContent-Length: 0\r\n") == 403
    refusals = [r for r in caplog.records if r.name == "sheepdog_drmaa.server" and "refused a request" in r.message]
    assert [r.levelno for r in refusals].count(logging.WARNING) == 1
    assert len(refusals) == 500


def test_repeated_warnings_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sheepdog_drmaa.server")
    warnings = Warnings("pokes", interval=0.2)
    for number in range(3):
        warnings.note("poked %d", number)
    wait_until(lambda: any("2 more pokes" in r.message for r in caplog.records), 5, "the summary")
    assert [r.message.split(" (")[0] for r in caplog.records] == ["poked 0", "2 more pokes in the last 0.2 s"]


@pytest.mark.parametrize("timestamp", ["nan", "-nan", "inf", "NaN"])
def test_non_finite_timestamps_are_refused(timestamp: str) -> None:
    assert not protocol.ReplayGuard().accept("0" * 32, timestamp)


def test_a_replayed_nonce_is_refused_after_a_pruning() -> None:
    guard, nonce = protocol.ReplayGuard(window=10), protocol.new_nonce()
    assert guard.accept(nonce, "1000.0", now=1000.0)
    assert not guard.accept(nonce, "1000.0", now=1005.0)
    assert not guard.accept(nonce, "1000.0", now=1100.0)  # pruned by now, but stale


@pytest.mark.parametrize("route, message", [
    (protocol.ROUTE_LEASE, {"reports": [{"task": "0", "number": 1}]}),
    (protocol.ROUTE_LEASE, {"reports": [{"task": 0, "number": 1, "result": "not bytes"}]}),
    (protocol.ROUTE_LEASE, {"reports": [{"task": 0, "number": 1, "exception": {"types": 3}}]}),
    (protocol.ROUTE_REPORT, {"reports": [{"task": 0, "number": 1}, {"task": True, "number": 1}]}),
    (protocol.ROUTE_LEASE, {"reports": {"task": 0, "number": 1}}),
    (protocol.ROUTE_LEASE, {}),
    (protocol.ROUTE_HEARTBEAT, {"running": {"task": 0, "number": 1}}),
    (protocol.ROUTE_SETUP_FAILED, {"error": "text"}),
    (protocol.ROUTE_HELLO, {"host": 7}),
    (protocol.ROUTE_TASK_DIED, {"task": 0}),
], ids=["task-str", "result-str", "types-int", "second-task-bool", "reports-dict", "reports-missing",
        "heartbeat-no-elapsed", "error-str", "host-int", "died-no-number"])
def test_a_signed_message_of_the_wrong_shape_gets_400_and_no_traceback(
        served: Callable[..., TaskServer], capfd: pytest.CaptureFixture[str], route: str,
        message: dict[str, Any]) -> None:
    def like_the_runner(message: dict[str, Any]) -> dict[str, Any]:
        reports = message.get("reports") or [{}]
        running = message.get("running") or {}
        return {"next": sum(r.get("task", 0) + 1 for r in reports),
                "types": [list((r.get("exception") or {}).get("types", ())) for r in reports],
                "number": message.get("number", 0) + 1, "host": (message.get("host") or "").upper(),
                "elapsed": running.get("elapsed", 0.0) + running.get("number", 0),
                "error": (message.get("error") or {}).get("traceback")}

    server = served({route: like_the_runner}, typed=True)
    with pytest.raises(ChannelError, match="HTTP 400"):
        channel(server.port).call(route, message, attempts=1)
    assert "Traceback" not in capfd.readouterr().err


def test_well_formed_messages_pass_the_shape_check() -> None:
    report = {"task": 3, "number": 1, "result": b"r", "usage": {"seconds": 1.0}}
    failure = {"types": ["builtins.ValueError"], "type": "ValueError", "message": "m", "traceback": "t", "pickle": None}
    sent: list[tuple[str, dict[str, Any]]] = [
        (protocol.ROUTE_HELLO, {"host": "node1", "process_group": 12}),
        (protocol.ROUTE_LEASE, {"reports": []}),
        (protocol.ROUTE_LEASE, {"reports": [report, report]}),
        (protocol.ROUTE_REPORT, {"reports": [{"task": 3, "number": 1, "exception": failure}]}),
        (protocol.ROUTE_HEARTBEAT, {"running": None}),
        (protocol.ROUTE_HEARTBEAT, {"running": {"task": 3, "number": 1, "elapsed": 0.5}}),
        (protocol.ROUTE_TASK_DIED, {"task": 3, "number": 1, "max_rss_kb": 2048}),
        (protocol.ROUTE_SETUP_FAILED, {"error": failure})]
    for route, message in sent:
        assert messages.REQUESTS[route].from_wire(dict(message, worker="w1")).worker == "w1"


def test_a_handler_bug_is_a_500_and_a_logged_error(served: Callable[..., TaskServer],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken(message: dict[str, Any]) -> NoReturn:
        raise KeyError("bug")

    server = served({protocol.ROUTE_HELLO: broken})
    with pytest.raises(ChannelError, match="HTTP 500"):
        channel(server.port).call(protocol.ROUTE_HELLO, {}, attempts=1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "sheepdog_drmaa.server"]
    assert len(errors) == 1 and errors[0].exc_info is not None and errors[0].exc_info[0] is KeyError
