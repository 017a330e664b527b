"""The worker's side of the task channel: signed requests to the server, the reports waiting to
go to it, and the heartbeat thread.

Standard library, protocol, messages and worker_ids only.
"""
from __future__ import annotations

import fcntl
import http.client
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .. import messages, protocol
from ..worker_ids import worker_id_from_environment

if TYPE_CHECKING:
    from .task import RunningTask

CONNECT_ATTEMPTS = 10
CONNECT_BACKOFF = 0.5
# A task running this long is named to the server at once, not at the next heartbeat.
ANNOUNCE_SECONDS = 1.0

R = TypeVar("R")


class ChannelError(Exception):
    """The server could not be reached or did not answer properly."""


def configuration() -> tuple[str, bytes, str]:
    """The server's address, the sweep's key and this worker's id, from the job's environment.

    KeyError, OSError or ValueError when it does not hold them.
    """
    url = os.environ[protocol.ENV_URL]
    key = protocol.read_key_file(os.environ[protocol.ENV_KEY_FILE])
    return url, key, worker_id_from_environment()


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

    def ask(self, request: messages.Request, read: Callable[[dict[str, Any]], R],
            attempts: int = CONNECT_ATTEMPTS) -> R:
        """Send ``request``; its reply, as ``read`` (the reply's from_wire) makes it."""
        reply = self.call(request.route, request.to_wire(), attempts)
        try:
            return read(reply)
        except messages.MalformedMessage as error:
            raise ChannelError(f"the server's answer on {request.route} is not one this worker understands "
                               f"({error}); is sheepdog_drmaa on the nodes the same version as the client's?") from None

    def call(self, route: str, message: dict[str, Any], attempts: int = CONNECT_ATTEMPTS) -> dict[str, Any]:
        """Send ``message``, naming this worker, to ``route``, trying ``attempts`` times; the reply as sent."""
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


class Outbox:
    """Reports of finished tasks not sent yet. They go with the next lease, or before it: from the
    main thread when they grow large or old, and from the heartbeat thread while a later task runs
    long, so that a task that hangs (or is killed for it) does not take its batch's finished
    results with it. One sender at a time, so that a lease never overtakes reports sent before it
    (the server would take the tasks still held as a lease whose answer was lost)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()      # guards the reports
        self.sending = threading.Lock()   # held by whoever sends some
        self.reports: list[messages.Report] = []
        self.size = 0
        self.oldest = 0.0

    def add(self, report: messages.Report) -> None:
        with self.lock:
            self.reports.append(report)
            self.size += _report_size(report)
            self.oldest = self.oldest or time.monotonic()

    def due(self) -> bool:
        """Large or old enough to be sent before the batch ends."""
        with self.lock:
            return bool(self.reports) and (self.size >= protocol.REPORT_FLUSH_BYTES
                                           or time.monotonic() - self.oldest >= protocol.REPORT_FLUSH_SECONDS)

    def take(self) -> tuple[messages.Report, ...]:
        with self.lock:
            reports, self.reports, self.size, self.oldest = self.reports, [], 0, 0.0
        return tuple(reports)

    def put_back(self, reports: Sequence[messages.Report]) -> None:
        """Reports whose sending failed: they go again, first."""
        with self.lock:
            self.reports[:0] = reports
            self.size += sum(_report_size(report) for report in reports)
            self.oldest = time.monotonic()


def _report_size(report: messages.Report) -> int:
    """About how many bytes a report adds to a request."""
    exception = report.exception or messages.ExceptionInfo()
    output = report.output or messages.Output()
    return (256 + len(report.result or b"") + len(exception.pickle or b"") + len(exception.traceback or "")
            + sum(len(text) for text in output.streams().values()))


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
                running = messages.Running(task, number, now - started)
                self.channel.ask(messages.Heartbeat(self.channel.worker_id, running), messages.HeartbeatReply.from_wire,
                                 attempts=1)
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
                    self.channel.ask(messages.ReportRequest(self.channel.worker_id, reports), messages.Ack.from_wire,
                                     attempts=1)
                except ChannelError:
                    self.outbox.put_back(reports)
                    raise
