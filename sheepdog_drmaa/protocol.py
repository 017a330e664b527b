"""The task channel between the submit host and the workers: names, signing and envelopes.

Every request and response body is signed with HMAC-SHA256 under a per-sweep key. A request
signature covers the route, a fresh nonce and a timestamp, so a captured request cannot be
replayed; a response signature covers the request's nonce, so a worker only believes the answer
to its own question. Bodies are pickles of plain dicts and are loaded only after the signature
checks out. Imported by the worker: standard library only.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import threading
import time
from typing import Any, Dict, Optional

# Job environment of a worker.
ENV_URL = "SHEEPDOG_URL"
ENV_KEY_FILE = "SHEEPDOG_KEY_FILE"
ENV_WORKER_ID = "SHEEPDOG_WORKER_ID"

# Routes, all POST.
ROUTE_HELLO = "/hello"
ROUTE_LEASE = "/lease"
ROUTE_HEARTBEAT = "/heartbeat"
ROUTE_SETUP_FAILED = "/setup-failed"

HEADER_SIGNATURE = "X-Sheepdog-Signature"
HEADER_NONCE = "X-Sheepdog-Nonce"
HEADER_TIME = "X-Sheepdog-Time"

# Worker exit statuses. Grid Engine requeues a job that exits 99 and errors one that exits 100,
# so the worker maps those (from os._exit inside f, say) to EXIT_RESERVED_STATUS.
EXIT_OK = 0
EXIT_SERVER_UNREACHABLE = 70
EXIT_BAD_CONFIGURATION = 71
EXIT_RESERVED_STATUS = 98
GRID_ENGINE_RESERVED = (99, 100)

# How far a request's timestamp may be from the server's clock, in seconds.
REPLAY_WINDOW = 300.0


def qualified_name(cls: type) -> str:
    """How exception classes are named across the channel: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def new_key() -> bytes:
    """A fresh random key for one sweep."""
    return secrets.token_bytes(32)


def write_key_file(path: str, key: bytes) -> None:
    """Write ``key`` to ``path`` readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.hex().encode())
    finally:
        os.close(fd)


def read_key_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return bytes.fromhex(handle.read().decode().strip())


def new_nonce() -> str:
    return secrets.token_hex(16)


def request_signature(key: bytes, route: str, nonce: str, timestamp: str, body: bytes) -> str:
    message = b"\n".join([b"request", route.encode(), nonce.encode(), timestamp.encode(), body])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def response_signature(key: bytes, nonce: str, body: bytes) -> str:
    message = b"\n".join([b"response", nonce.encode(), body])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_matches(expected: str, given: Optional[str]) -> bool:
    return given is not None and hmac.compare_digest(expected, given)


def encode(message: Dict[str, Any]) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(body: bytes) -> Dict[str, Any]:
    """Load a body whose signature has already been checked; anything but a dict is malformed."""
    message = pickle.loads(body)
    if not isinstance(message, dict):
        raise ValueError("message is not a dict")
    return message


class ReplayGuard:
    """Remembers the nonces seen within the replay window; refuses stale times and repeats."""

    def __init__(self, window: float = REPLAY_WINDOW) -> None:
        self.window = window
        self._seen: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def accept(self, nonce: str, timestamp: str, now: Optional[float] = None) -> bool:
        now = time.time() if now is None else now
        try:
            sent = float(timestamp)
        except ValueError:
            return False
        if abs(now - sent) > self.window or not 16 <= len(nonce) <= 128:
            return False
        with self._lock:
            if now >= self._next_prune:
                self._seen = {n: t for n, t in self._seen.items() if now - t <= 2 * self.window}
                self._next_prune = now + self.window
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
        return True
