"""The task server on the submit host: a threaded Werkzeug WSGI server. The only werkzeug importer.

Anyone who reaches the port can talk to it, so nothing is read, loaded or kept on a stranger's
behalf. Each request's headers (route, length, head signature, timestamp, nonce) are checked before
a byte of its body is read; then the body's signature, before anything is unpickled; then the
message is read as its route's (:mod:`.messages`), and only a well-formed one reaches the sweep's
handler for that route, whose typed reply goes back signed.
Anything unsigned, badly signed, replayed or malformed gets a 4xx answer and reaches no handler.

Connections are bounded too: each carries one request; one that has not shown signed headers
within ``header_timeout`` seconds is closed; such connections are at most a quarter of the
connections open, and the oldest of them makes room for a newcomer, so that real workers, whose
headers arrive at once, always get in. The soft limit on open files is raised to the hard one.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import resource
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Callable

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from . import messages, protocol
from .errors import ConfigurationError

log = logging.getLogger(__name__)

Handler = Callable[[Any], messages.Reply]  # takes its route's request (messages.REQUESTS)
MAX_BODY = (256 << 20) + protocol.ENVELOPE_BYTES  # default largest request body: a 256 MiB result
HEADER_TIMEOUT = 10.0  # seconds from accepting a connection to its request's signed headers
SOCKET_TIMEOUT = 60.0  # seconds any one read or write of a connection may stall
HEADER_BYTES = 16 << 10  # request line and headers of a request; a worker sends about 500 bytes
MAX_CONNECTIONS = 1024  # open connections at most (fewer if the open-files limit is low)
SUMMARY_SECONDS = 60.0  # how often a warning that strangers can repeat is summarised
ENVIRON_SIGNED = "sheepdog.signed"  # the app calls it once a request's headers check out


class Warnings:
    """A warning that strangers can repeat at will: the first is logged, then a count at most
    every ``interval`` seconds while they go on; each one at DEBUG."""

    def __init__(self, what: str, interval: float = SUMMARY_SECONDS) -> None:
        self.what, self.interval = what, interval
        self._count = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def note(self, message: str, *args: Any) -> None:
        with self._lock:
            first = self._timer is None
            if first:
                self._start_timer()
            else:
                self._count += 1
        if first:
            log.warning(message + " (further %s are summarised every %g s)", *args, self.what, self.interval)
        else:
            log.debug(message, *args)

    def _start_timer(self) -> None:
        self._timer = threading.Timer(self.interval, self._summarise)
        self._timer.daemon = True
        self._timer.start()

    def _summarise(self) -> None:
        with self._lock:
            count, self._count = self._count, 0
            if count:
                self._start_timer()
            else:
                self._timer = None
        if count:
            log.warning("%d more %s in the last %g s (each is logged at DEBUG)", count, self.what, self.interval)


def make_app(key: bytes, handlers: Mapping[str, Handler], max_body: int = MAX_BODY,
             guard: protocol.ReplayGuard | None = None,
             requests: Mapping[str, type[messages.Request]] = messages.REQUESTS) -> Callable[..., Any]:
    """The WSGI application: signed POSTs to the routes in ``handlers``, bodies of at most ``max_body``
    bytes, each read as the message ``requests`` names for its route."""
    guard = guard or protocol.ReplayGuard()
    kinds = {route: requests[route] for route in handlers}
    refusals = Warnings("refused requests")

    def refuse(request: Request, status: int, reason: str) -> Response:
        refusals.note("refused a request to %s from %s: %s", request.path, request.remote_addr, reason)
        return Response(reason + "\n", status=status, mimetype="text/plain")

    @Request.application
    def app(request: Request) -> Response:
        route, headers = request.path, request.headers
        handler = handlers.get(route)
        if handler is None:
            return refuse(request, 404, "no such route")
        if request.method != "POST":
            return refuse(request, 405, "POST only")
        declared = request.environ.get("CONTENT_LENGTH", "")
        if "Transfer-Encoding" in headers or not (declared.isascii() and declared.isdigit() and len(declared) < 16):
            return refuse(request, 411, "a Content-Length is required, and no Transfer-Encoding")
        length = int(declared)
        nonce, timestamp = headers.get(protocol.HEADER_NONCE, ""), headers.get(protocol.HEADER_TIME, "")
        expected = protocol.head_signature(key, route, nonce, timestamp, length)
        if not protocol.signature_matches(expected, headers.get(protocol.HEADER_HEAD_SIGNATURE)):
            return refuse(request, 403, "bad or missing signature")
        if not guard.accept(nonce, timestamp):
            return refuse(request, 409, "replayed, stale or malformed nonce or timestamp")
        signed = request.environ.get(ENVIRON_SIGNED)
        if signed is not None:
            signed()
        if length > max_body:
            return refuse(request, 413, f"body larger than {max_body} bytes")
        body = request.environ["wsgi.input"].read(length)
        if len(body) != length:
            return refuse(request, 400, "body shorter than its Content-Length")
        expected = protocol.request_signature(key, route, nonce, timestamp, body)
        if not protocol.signature_matches(expected, headers.get(protocol.HEADER_SIGNATURE)):
            return refuse(request, 403, "bad or missing signature")
        try:
            wire = protocol.decode(body)
        except Exception:
            return refuse(request, 400, "malformed body")
        try:
            message = kinds[route].from_wire(wire)
        except messages.MalformedMessage as problem:
            return refuse(request, 400, f"malformed message: {problem}")
        try:
            reply = protocol.encode_parts(handler(message).to_wire())
        except Exception:  # a bug on this side: the worker gets a 500, the user a traceback in the log
            log.exception("the handler for %s failed on a message from worker %s", route, message.worker)
            return Response("internal error\n", status=500, mimetype="text/plain")
        return _signed_response(key, nonce, reply)

    return app


def _signed_response(key: bytes, nonce: str, parts: list[bytes]) -> Response:
    """The answer to the request of ``nonce``: the parts of an encoded reply, signed."""
    response = Response(_as_bytes(parts), mimetype="application/octet-stream")
    response.content_length = sum(len(part) for part in parts)
    response.headers[protocol.HEADER_SIGNATURE] = protocol.response_signature(key, nonce, parts)
    return response


class _Input:
    """A connection's request stream: at most HEADER_BYTES of request line and headers, and no
    body unless the app found the headers signed. (After answering, werkzeug drains whatever
    body is left unread: up to 10 GB, 10 MB at a time.)"""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.header_budget, self.opened = raw, HEADER_BYTES, False

    def readline(self, limit: int = -1) -> bytes:
        line = self.raw.readline(self.header_budget if limit < 0 else min(limit, self.header_budget))
        self.header_budget -= len(line)
        return line

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size) if self.opened else b""

    def close(self) -> None:
        self.raw.close()


class _Handler(WSGIRequestHandler):
    """One request per connection, read through ``_Input``; request lines at DEBUG rather than on stderr."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT  # setup() puts it on the socket
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.input = _Input(self.rfile)  # type: ignore[arg-type]
        self.rfile = self.input  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.close_connection = True  # werkzeug answers "Connection: close" anyway

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[ENVIRON_SIGNED] = self._signed
        return environ

    def _signed(self) -> None:
        """The request's headers are signed: its body may be read, and its connection is a worker's."""
        self.input.opened = True
        self.server.signed(self.connection)

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s " + message, self.address_string(), *args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        """Werkzeug formats a request line for every request; only worth it when DEBUG is on."""
        if log.isEnabledFor(logging.DEBUG):
            super().log_request(code, size)


class _Server(ThreadedWSGIServer):
    """Werkzeug's threaded server with the connection bounds of this module's docstring."""

    def __init__(self, host: str, port: int, app: Callable[..., Any], header_timeout: float,
                 max_connections: int) -> None:
        super().__init__(host, port, app, handler=_Handler)
        self.header_timeout, self.max_connections = header_timeout, max_connections
        self.max_unsigned = max(1, max_connections // 4)
        # Connections not yet shown to be a worker's, oldest first: deadline and peer.
        self.unsigned: collections.OrderedDict[socket.socket, tuple[float, Any]] = collections.OrderedDict()
        self.busy: set[socket.socket] = set()  # connections serving a signed request
        self.lock = threading.Lock()
        self.drops = Warnings("dropped connections")
        self.errors = Warnings("errors on connections")

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = client_address[0]
        with self.lock:
            open_now = len(self.unsigned) + len(self.busy)
            if (len(self.unsigned) >= self.max_unsigned or open_now >= self.max_connections) and self.unsigned:
                self._drop(next(iter(self.unsigned)), "dropped to make room for a newer one")
            admitted = len(self.unsigned) + len(self.busy) < self.max_connections
            if admitted:
                self.unsigned[request] = (time.monotonic() + self.header_timeout, peer)
        if not admitted:
            self.drops.note("turned away a connection from %s: %d already serve workers", peer, len(self.busy))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def signed(self, request: socket.socket) -> None:
        with self.lock:
            if self.unsigned.pop(request, None) is not None:
                self.busy.add(request)

    def service_actions(self) -> None:
        """Close the connections past their deadline (the serve loop calls this every 0.1 s at least)."""
        now = time.monotonic()
        with self.lock:
            while self.unsigned:
                request, (deadline, _) = next(iter(self.unsigned.items()))
                if deadline > now:
                    break
                self._drop(request, f"no signed request within {self.header_timeout:g} s")

    def get_request(self) -> Any:
        try:
            return super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                self.errors.note("cannot accept a connection: %s", error.strerror)
                with self.lock:
                    if self.unsigned:
                        self._drop(next(iter(self.unsigned)), "dropped to free a file descriptor")
                time.sleep(0.05)  # the connection waits in the backlog; don't spin on it
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An unexpected error on a connection (out of descriptors, say): to the log, not to stderr."""
        self.errors.note("error on a connection from %s: %r", client_address[0], sys.exc_info()[1])
        log.debug("the error on a connection from %s:", client_address[0], exc_info=True)

    def log(self, type: str, message: str, *args: Any) -> None:
        """Werkzeug's own messages (an error after the answer was sent, say): to this module's log."""
        self.errors.note("werkzeug %s: %s", type, message % args if args else message)

    def close_request(self, request: Any) -> None:
        with self.lock:
            self.unsigned.pop(request, None)
            self.busy.discard(request)
        super().close_request(request)

    def drop_unsigned(self) -> None:
        """Close every connection that has not shown signed headers (when the server stops)."""
        with self.lock:
            while self.unsigned:
                self._drop(next(iter(self.unsigned)), None)

    def _drop(self, request: socket.socket, reason: str | None) -> None:
        """Wake the connection's thread with end-of-stream; it closes the socket. Hold ``lock``."""
        _, peer = self.unsigned.pop(request)
        if reason is not None:
            self.drops.note("closed a connection from %s: %s", peer, reason)
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit in force.

    The usual soft limit, 1,024, is soon reached by connections, and a process out of descriptors
    fails far from the server (the backend's pipes and log files, the store).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # macOS refuses an unlimited soft limit: keep the one we have
    return soft


def connection_cap(open_files: int) -> int:
    """How many connections to serve at most: MAX_CONNECTIONS, and half the open-files limit."""
    return MAX_CONNECTIONS if open_files == resource.RLIM_INFINITY else max(4, min(MAX_CONNECTIONS, open_files // 2))


def _as_bytes(parts: list[bytes], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The parts of a body as WSGI wants them (bytes): a small body in one piece (one write), a large
    out-of-band part copied a chunk at a time."""
    if sum(len(part) for part in parts) <= chunk:
        yield b"".join(parts)
        return
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            view = memoryview(part)
            for start in range(0, len(view), chunk):
                yield bytes(view[start:start + chunk])


class TaskServer:
    """Serves ``app`` on ``host``:``port`` (0: any free port) from a background thread.

    ``header_timeout`` and ``max_connections`` (default: ``connection_cap`` of the raised
    open-files limit) bound the connections, as the module's docstring says.
    """

    def __init__(self, app: Callable[..., Any], host: str, port: int = 0, *, header_timeout: float = HEADER_TIMEOUT,
                 max_connections: int | None = None) -> None:
        open_files = raise_open_file_limit()
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):  # werkzeug prints why it cannot bind, then exits
                self.server = _Server(host, port, app, header_timeout, max_connections or connection_cap(open_files))
        except SystemExit:
            reason = said.getvalue().splitlines()[0] if said.getvalue() else "cannot bind"
            raise ConfigurationError(f"cannot listen on {host}:{port} ({reason}); pass port=0 for any free port, "
                                     "or bind= an address of this machine") from None
        self.host = host
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="sheepdog-server", daemon=True)
        self._thread.start()

    def url_for(self, host: str) -> str:
        """The address of this server as workers reach it through ``host``."""
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.drop_unsigned()
        self.server.server_close()
        self._thread.join(timeout=5)
