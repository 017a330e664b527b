"""The task server on the submit host: a threaded Werkzeug WSGI server. The only werkzeug importer.

It checks each request's signature, timestamp and nonce before loading anything, hands the
message to the sweep's handler for that route, and signs the answer. Anything unsigned, badly
signed, replayed or malformed gets a 4xx answer and reaches no handler.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Mapping, Optional

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import protocol

log = logging.getLogger(__name__)

Handler = Callable[[Dict[str, Any]], Dict[str, Any]]
MAX_BODY = 1 << 30


class _QuietHandler(WSGIRequestHandler):
    """Keep-alive connections, and request lines at DEBUG rather than on stderr."""

    protocol_version = "HTTP/1.1"

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s " + message, self.address_string(), *args)


def make_app(key: bytes, handlers: Mapping[str, Handler], guard: Optional[protocol.ReplayGuard] = None):
    """The WSGI application: signed POSTs to the routes in ``handlers``."""
    guard = guard or protocol.ReplayGuard()

    def refuse(status: int, reason: str) -> Response:
        return Response(reason + "\n", status=status, mimetype="text/plain")

    @Request.application
    def app(request: Request) -> Response:
        handler = handlers.get(request.path)
        if handler is None:
            return refuse(404, "no such route")
        if request.method != "POST":
            return refuse(405, "POST only")
        if (request.content_length or 0) > MAX_BODY:
            return refuse(413, "body too large")
        body = request.get_data(cache=False)
        nonce = request.headers.get(protocol.HEADER_NONCE, "")
        timestamp = request.headers.get(protocol.HEADER_TIME, "")
        expected = protocol.request_signature(key, request.path, nonce, timestamp, body)
        if not protocol.signature_matches(expected, request.headers.get(protocol.HEADER_SIGNATURE)):
            log.warning("refused a request to %s from %s: bad or missing signature", request.path, request.remote_addr)
            return refuse(403, "bad or missing signature")
        if not guard.accept(nonce, timestamp):
            log.warning("refused a request to %s from %s: replayed or stale", request.path, request.remote_addr)
            return refuse(409, "replayed or stale request")
        try:
            message = protocol.decode(body)
        except Exception:
            return refuse(400, "malformed body")
        if not isinstance(message.get("worker"), str):
            return refuse(400, "message names no worker")
        reply = protocol.encode(handler(message))
        response = Response(reply, mimetype="application/octet-stream")
        response.headers[protocol.HEADER_SIGNATURE] = protocol.response_signature(key, nonce, reply)
        return response

    return app


class TaskServer:
    """Serves ``app`` on ``host``:``port`` (0: any free port) from a background thread."""

    def __init__(self, app: Callable[..., Any], host: str, port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.server.daemon_threads = True
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
        self.server.server_close()
        self._thread.join(timeout=5)
