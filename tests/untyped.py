"""Routes of the transport tests' own: each message and answer a plain dict, in place of the typed
messages of sheepdog_drmaa.messages, so that the server and the worker's Channel are tested alone.
Imported by test servers in child processes too: no pytest here."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from sheepdog_drmaa import messages
from sheepdog_drmaa.messages import MalformedMessage
from sheepdog_drmaa.server import make_app


class Untyped(dict[str, Any]):
    """Any message that names its worker, as it came; or any answer."""

    route: ClassVar[str] = ""

    @property
    def worker(self) -> str:
        worker: str = self["worker"]
        return worker

    @classmethod
    def from_wire(cls, value: object) -> Untyped:
        if not isinstance(value, dict) or not isinstance(value.get("worker"), str):
            raise MalformedMessage("the message does not name its worker")
        return cls(value)

    def to_wire(self) -> dict[str, Any]:
        return dict(self)


PlainHandler = Callable[[Any], Mapping[str, Any]]


def untyped_app(key: bytes, handlers: Mapping[str, PlainHandler], **options: Any) -> Callable[..., Any]:
    """make_app for handlers that take the message as a dict and answer a dict."""
    def answering(handler: PlainHandler) -> Callable[[Any], Untyped]:
        return lambda message: Untyped(handler(message))

    requests: dict[str, type[messages.Request]] = {route: Untyped for route in handlers}
    return make_app(key, {route: answering(handler) for route, handler in handlers.items()},
                    requests=requests, **options)
