"""The task channel between the submit host and the workers: names, signing and envelopes.

Every request and response body is signed with HMAC-SHA256 under a per-sweep key. A request
signature covers the route, a fresh nonce and a timestamp, so a captured request cannot be
replayed; a response signature covers the request's nonce, so a worker only believes the answer
to its own question. A second request signature, over the headers alone (route, nonce, timestamp
and body length), lets the server refuse a request before it reads a byte of its body, so that
nobody without the key can make it read one. Bodies are pickles of plain dicts and are loaded only
after the signature checks out; :mod:`.messages` then reads each as its route's message.
Imported by the worker: standard library only.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import pickle
import re
import secrets
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

# Job environment of a worker.
ENV_URL = "SHEEPDOG_URL"
ENV_KEY_FILE = "SHEEPDOG_KEY_FILE"
ENV_WORKER_ID = "SHEEPDOG_WORKER_ID"
ENV_SETUP_SCRIPT = "SHEEPDOG_SETUP_SCRIPT"  # the /bin/sh script that runs the set-up lines, then the worker

# Routes, all POST.
ROUTE_HELLO = "/hello"
ROUTE_LEASE = "/lease"          # reports what the worker ran, and asks for its next batch
ROUTE_REPORT = "/report"        # reports part of a batch early (a large result, or a slow batch)
ROUTE_HEARTBEAT = "/heartbeat"
ROUTE_SETUP_FAILED = "/setup-failed"
ROUTE_TASK_DIED = "/task-died"  # the worker's parent names the task its child was running as it died

HEADER_SIGNATURE = "X-Sheepdog-Signature"
HEADER_NONCE = "X-Sheepdog-Nonce"
HEADER_TIME = "X-Sheepdog-Time"
HEADER_HEAD_SIGNATURE = "X-Sheepdog-Head-Signature"

# Worker exit statuses. Grid Engine requeues a job that exits 99 and errors one that exits 100,
# so the worker maps those (from os._exit inside f, say) to EXIT_RESERVED_STATUS.
EXIT_OK = 0
EXIT_SERVER_UNREACHABLE = 70
EXIT_BAD_CONFIGURATION = 71
EXIT_SETUP_FAILED = 72  # the job's shell, when a set-up line (setup=) fails before Python starts
EXIT_RESERVED_STATUS = 98
GRID_ENGINE_RESERVED = (99, 100)

# A worker whose hello arrives before the client knows its id (its submission is still under way)
# is told to say hello again after this many seconds, for at most HELLO_RETRY_LIMIT seconds.
HELLO_RETRY_SECONDS = 0.5
HELLO_RETRY_LIMIT = 120.0
# How far a request's timestamp may be from the server's clock, in seconds.
REPLAY_WINDOW = 300.0
# Room for a report's own fields (usage, exception text) around its result, in bytes.
ENVELOPE_BYTES = 1 << 20
# A worker sends the reports it has gathered once they reach about this size (or this age, in
# seconds) without waiting for the end of its batch: one request carries at most this much more
# than its largest report.
REPORT_FLUSH_BYTES = 1 << 20
REPORT_FLUSH_SECONDS = 1.0

_NONCE = re.compile(r"[0-9a-f]{32}")  # what new_nonce makes


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


def head_signature(key: bytes, route: str, nonce: str, timestamp: str, length: int) -> str:
    """Signs what the server checks before it reads a body: route, nonce, timestamp and body length."""
    message = b"\n".join([b"head", route.encode(), nonce.encode(), timestamp.encode(), str(length).encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_headers(key: bytes, route: str, body: bytes) -> dict[str, str]:
    """The headers of a fresh request to ``route`` carrying ``body``: nonce, timestamp, both signatures."""
    nonce, timestamp = new_nonce(), repr(time.time())
    return {HEADER_NONCE: nonce, HEADER_TIME: timestamp,
            HEADER_HEAD_SIGNATURE: head_signature(key, route, nonce, timestamp, len(body)),
            HEADER_SIGNATURE: request_signature(key, route, nonce, timestamp, body)}


def response_signature(key: bytes, nonce: str, body: bytes | Sequence[bytes]) -> str:
    """Signs a response to the request of ``nonce``; ``body`` may be given as the parts of encode_parts."""
    signature = hmac.new(key, b"response\n" + nonce.encode() + b"\n", hashlib.sha256)
    for part in [body] if isinstance(body, bytes) else body:
        signature.update(part)
    return signature.hexdigest()


def signature_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected, given)


_LENGTH = struct.Struct("<Q")


def out_of_band(data: bytes) -> pickle.PickleBuffer:
    """Marks a large value of a message to travel beside its pickle, not copied into it (see encode_parts)."""
    return pickle.PickleBuffer(data)


def encode_parts(message: dict[str, Any]) -> list[bytes]:
    """A message as the parts of one body: a length-prefixed pickle, then each out-of-band value the
    same way. Sent part by part, a large argument is never copied into the pickle on its way out."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    parts = [_LENGTH.pack(len(head)), head]
    for buffer in buffers:
        raw = buffer.raw()
        parts += [_LENGTH.pack(raw.nbytes), raw]  # type: ignore[list-item]  # a memoryview, sent as is
    return parts


def encode(message: dict[str, Any]) -> bytes:
    return b"".join(encode_parts(message))


def decode(body: bytes) -> dict[str, Any]:
    """Load a body whose signature has already been checked; anything but a dict is malformed.

    Out-of-band values come back as read-only memoryviews of ``body`` (no copy).
    """
    view = memoryview(body)
    frames: list[memoryview] = []
    offset = 0
    while offset < len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > len(view) - offset:
            raise ValueError("a part runs past the end of the body")
        frames.append(view[offset:offset + length])
        offset += length
    if not frames:
        raise ValueError("empty body")
    message = pickle.loads(frames[0], buffers=frames[1:])
    if not isinstance(message, dict):
        raise ValueError("message is not a dict")
    return message


class ReplayGuard:
    """Remembers the nonces seen within the replay window; refuses stale or malformed times, and repeats."""

    def __init__(self, window: float = REPLAY_WINDOW) -> None:
        self.window = window
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def accept(self, nonce: str, timestamp: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if not _NONCE.fullmatch(nonce) or len(timestamp) > 32:
            return False
        try:
            sent = float(timestamp)
        except ValueError:
            return False
        if not math.isfinite(sent) or abs(now - sent) > self.window:  # nan is never "too far"
            return False
        with self._lock:
            if now >= self._next_prune:
                self._seen = {n: t for n, t in self._seen.items() if now - t <= 2 * self.window}
                self._next_prune = now + self.window
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
        return True
