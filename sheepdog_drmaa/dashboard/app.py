"""The live dashboard: a read-only WSGI app over the store, served by Werkzeug.

Bound to a loopback address it serves whoever reaches it (that is this machine's users, who could
read the store anyway only if it were theirs: keep it on 127.0.0.1 and reach it over ``ssh -L``).
Bound anywhere else it asks, of every request, for the random token printed in its URL: a sweep's
arguments, tracebacks and output must not be readable by others on the network.
"""
from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any, Callable

from werkzeug.exceptions import Forbidden, HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from ..options import DASHBOARD_ANNOUNCEMENT
from ..store import Store
from . import data, pages


class Dashboard:
    """The app: the sweeps list, a sweep's page, and the JSON each refreshes from."""

    def __init__(self, store_path: str, token: str | None) -> None:
        self.store_path, self.token = store_path, token
        self.lock = threading.Lock()  # one read of the store at a time (one read-only connection)
        self.store = Store(store_path, readonly=True)
        self.routes = Map([Rule("/", endpoint="sweeps"), Rule("/api/sweeps", endpoint="sweeps_json"),
                           Rule("/sweep/<name>", endpoint="sweep"), Rule("/api/sweep/<name>", endpoint="sweep_json")])

    def link(self, path: str) -> str:
        return path + (f"?{urllib.parse.urlencode({'token': self.token})}" if self.token else "")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            if request.method not in ("GET", "HEAD"):
                raise Forbidden("the dashboard is read-only")
            if self.token is not None and not hmac.compare_digest(request.args.get("token", ""), self.token):
                raise Forbidden("this dashboard asks for the token printed in its URL")
            endpoint, values = self.routes.bind_to_environ(environ).match()
            with self.lock:
                response = getattr(self, endpoint)(**values)
        except HTTPException as error:
            response = error.get_response(environ)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                       "script-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        body: Iterable[bytes] = response(environ, start_response)
        return body

    def sweeps(self) -> Response:
        rows = data.sweep_rows(self.store)
        return _html(pages.sweeps_page(rows, self.store_path, self.link, self.link("/api/sweeps")))

    def sweeps_json(self) -> Response:
        rows = data.sweep_rows(self.store)
        return _json({"sweeps": [{"name": r.name, "id": r.id, "state": r.state, "counts": r.counts} for r in rows],
                      "html": pages.sweeps_table(rows, self.link)})

    def sweep(self, name: str) -> Response:
        view = data.sweep_view(self.store, self._record(name))
        return _html(pages.sweep_page(view, self.link, self.link(f"/api/sweep/{view.row.id}")))

    def sweep_json(self, name: str) -> Response:
        view = data.sweep_view(self.store, self._record(name))
        return _json({"name": view.row.name, "id": view.row.id, "state": view.row.state, "counts": view.row.counts,
                      "eta_seconds": view.eta_seconds, "html": pages.sweep_body(view, self.link)})

    def _record(self, name: str) -> Any:
        record = data.find(self.store, name)
        if record is None:
            raise NotFound(f"no sweep {name!r} in {self.store_path}")
        return record


def _html(text: str) -> Response:
    return Response(text, mimetype="text/html")


def _json(value: Any) -> Response:
    return Response(json.dumps(value), mimetype="application/json")


def needs_token(bind: str) -> bool:
    """Whether a dashboard bound to ``bind`` asks for a token: anywhere but a loopback address."""
    try:
        return not ipaddress.ip_address(bind).is_loopback
    except ValueError:  # a name: loopback only if every address it has is
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(bind, None)}
        return not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def serve(store_path: str, bind: str, port: int, name: str | None) -> tuple[Any, str]:
    """A server for the dashboard (not yet serving) and the URL that opens it (with the token if one
    is asked)."""
    token = secrets.token_urlsafe(18) if needs_token(bind) else None
    dashboard = Dashboard(store_path, token)
    server = make_server(bind, port, dashboard, threaded=True)
    host = bind if ":" not in bind else f"[{bind}]"
    path = f"/sweep/{urllib.parse.quote(name)}" if name else "/"
    return server, f"http://{host}:{server.server_port}{dashboard.link(path)}"


def announce(store_path: str, url: str) -> None:
    """Say beside the store that a dashboard of it runs at ``url`` (owner-only, like the store)."""
    path = _announced(store_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "pid": os.getpid()}, handle)


def withdraw(store_path: str, url: str) -> None:
    """This dashboard no longer runs: its announcement goes, unless another dashboard's replaced it."""
    path = _announced(store_path)
    with contextlib.suppress(OSError, ValueError):
        with open(path) as handle:
            if json.load(handle).get("url") == url:
                os.unlink(path)


def _announced(store_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(store_path)), DASHBOARD_ANNOUNCEMENT)
