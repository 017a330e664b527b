"""Routes of the transport tests' own: each message and answer a plain dict, in place of the typed
messages of sheepdog_drmaa.messages, so that the server and the worker's Channel are tested alone.
Imported by test servers in child processes too: no pytest here."""
from sheepdog_drmaa.messages import MalformedMessage
from sheepdog_drmaa.server import make_app


class Untyped(dict):
    """Any message that names its worker, as it came; or any answer."""

    @property
    def worker(self):
        return self["worker"]

    @classmethod
    def from_wire(cls, value):
        if not isinstance(value, dict) or not isinstance(value.get("worker"), str):
            raise MalformedMessage("the message does not name its worker")
        return cls(value)

    def to_wire(self):
        return dict(self)


def untyped_app(key, handlers, **options):
    """make_app for handlers that take the message as a dict and answer a dict."""
    def answering(handler):
        return lambda message: Untyped(handler(message))

    return make_app(key, {route: answering(handler) for route, handler in handlers.items()},
                    requests={route: Untyped for route in handlers}, **options)
