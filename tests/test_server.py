"""The task channel over a real socket: signed requests pass, everything else gets a 4xx and loads nothing."""
from __future__ import annotations

import http.client
import os
import pathlib
import pickle
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from untyped import untyped_app

from sheepdog_drmaa import protocol
from sheepdog_drmaa.errors import ConfigurationError
from sheepdog_drmaa.server import TaskServer, make_app
from sheepdog_drmaa.worker.channel import Channel, ChannelError

KEY = b"k" * 32
# The served fixture: the server, and the messages its one handler was called with.
Served = tuple[TaskServer, list[dict[str, Any]]]


class TouchOnLoad:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.fixture
def served() -> Iterator[Served]:
    calls: list[dict[str, Any]] = []

    def echo(message: dict[str, Any]) -> dict[str, Any]:
        calls.append(message)
        return {"echo": message.get("value")}

    server = TaskServer(untyped_app(KEY, {protocol.ROUTE_HELLO: echo}), "127.0.0.1", 0)
    yield server, calls
    server.stop()


def post(server: TaskServer, route: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", route, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read(), response.getheader(protocol.HEADER_SIGNATURE)


def signed_headers(key: bytes, route: str, body: bytes, nonce: str | None = None,
                   timestamp: str | None = None) -> dict[str, str]:
    nonce = nonce or protocol.new_nonce()
    timestamp = timestamp or repr(time.time())
    return {protocol.HEADER_NONCE: nonce, protocol.HEADER_TIME: timestamp,
            protocol.HEADER_HEAD_SIGNATURE: protocol.head_signature(key, route, nonce, timestamp, len(body)),
            protocol.HEADER_SIGNATURE: protocol.request_signature(key, route, nonce, timestamp, body)}


def test_a_signed_request_is_answered_with_a_signed_response(served: Served) -> None:
    server, calls = served
    reply = Channel(server.url, KEY, "w1").call(protocol.ROUTE_HELLO, {"value": 42})
    assert reply == {"echo": 42}
    assert calls[0]["worker"] == "w1"


@pytest.mark.parametrize("headers_for", [
    lambda body: {},                                                            # unsigned
    lambda body: signed_headers(b"x" * 32, protocol.ROUTE_HELLO, body),         # wrong key
    lambda body: signed_headers(KEY, protocol.ROUTE_LEASE, body),               # signed for another route
    lambda body: signed_headers(KEY, protocol.ROUTE_HELLO, body, timestamp=repr(time.time() - 3600)),  # stale
], ids=["unsigned", "wrong-key", "other-route", "stale"])
def test_forged_requests_are_refused_and_nothing_is_unpickled(served: Served, tmp_path: pathlib.Path,
                                                              headers_for: Callable[[bytes], dict[str, str]]) -> None:
    server, calls = served
    marker = str(tmp_path / "loaded")
    body = pickle.dumps({"worker": "w1", "payload": TouchOnLoad(marker)})
    status, _, _ = post(server, protocol.ROUTE_HELLO, body, headers_for(body))
    assert 400 <= status < 500
    assert not os.path.exists(marker)
    assert calls == []


def test_a_replayed_request_is_refused(served: Served) -> None:
    server, calls = served
    body = protocol.encode({"worker": "w1", "value": 1})
    headers = signed_headers(KEY, protocol.ROUTE_HELLO, body)
    assert post(server, protocol.ROUTE_HELLO, body, headers)[0] == 200
    assert post(server, protocol.ROUTE_HELLO, body, headers)[0] == 409
    assert len(calls) == 1


@pytest.mark.parametrize("body", [b"not a pickle", pickle.dumps([1, 2]), pickle.dumps({"no": "worker"})])
def test_malformed_signed_bodies_get_400(served: Served, body: bytes) -> None:
    server, calls = served
    assert post(server, protocol.ROUTE_HELLO, body, signed_headers(KEY, protocol.ROUTE_HELLO, body))[0] == 400
    assert calls == []


def test_unknown_routes_and_methods(served: Served) -> None:
    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", protocol.ROUTE_HELLO)
    assert connection.getresponse().status == 405
    assert post(server, "/nope", b"", {})[0] == 404


def test_a_worker_holding_another_key_is_refused(served: Served) -> None:
    server, _ = served
    with pytest.raises(ChannelError, match="refused|not signed"):
        Channel(server.url, b"y" * 32, "w1").call(protocol.ROUTE_HELLO, {}, attempts=1)


def test_a_port_in_use_is_a_clear_error_not_an_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port} .*in use.*port=0"):
            TaskServer(make_app(KEY, {}), "127.0.0.1", port)
