"""The messages of the task channel: one immutable record (a named tuple) per request and per reply of each route.

On the wire a message is a plain dict (``to_wire``), pickled by :func:`.protocol.encode`.
``from_wire`` reads one back and checks it: a field that is absent or None is the same, fields it
does not know are ignored, and any other field of the wrong type raises MalformedMessage, which the
server answers with 400 before any handler sees the request. Imported by the worker: standard
library and protocol only.
"""
from __future__ import annotations

from collections.abc import Mapping
from pickle import PickleBuffer
from typing import Any, NamedTuple, Protocol, TypeVar, Union

from . import protocol

T = TypeVar("T")
# A task's pickled argument: bytes, or a buffer that travels beside the message's pickle
# (protocol.out_of_band) and arrives as a memoryview of the body.
Argument = Union[bytes, memoryview, PickleBuffer]


class MalformedMessage(ValueError):
    """A message that does not have the shape of its route's."""


class Request(Protocol):
    """A worker's message to one route, naming the worker."""

    @property
    def route(self) -> str: ...

    @property
    def worker(self) -> str: ...

    @classmethod
    def from_wire(cls, value: object) -> Request: ...

    def to_wire(self) -> dict[str, Any]: ...


class Reply(Protocol):
    """The server's answer on one route."""

    def to_wire(self) -> dict[str, Any]: ...


def _fields(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{where} is a {type(value).__name__}, not a dict")
    return value


def _get(fields: Mapping[str, Any], name: str, kind: type[T], where: str) -> T:
    value = fields.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedMessage(f"{where}[{name!r}] is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _maybe(fields: Mapping[str, Any], name: str, kind: type[T], where: str) -> T | None:
    return None if fields.get(name) is None else _get(fields, name, kind, where)


def _number(fields: Mapping[str, Any], name: str, where: str) -> float:
    value = fields.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MalformedMessage(f"{where}[{name!r}] is a {type(value).__name__}, not a number")
    return value


def _reports(fields: Mapping[str, Any], where: str) -> tuple[Report, ...]:
    place, items = f"{where}['reports']", fields.get("reports")
    if not isinstance(items, list):
        raise MalformedMessage(f"{place} is a {type(items).__name__}, not a list")
    return tuple(Report.from_wire(item, f"{place}[{index}]") for index, item in enumerate(items))


# -- parts of messages --------------------------------------------------------------------------


class ExceptionInfo(NamedTuple):
    """An exception raised by f (or by loading it) as the server records it; its pickle may be left out."""

    types: list[str] | None = None  # qualified names along its class's MRO (items are not checked)
    type: str | None = None
    message: str | None = None
    traceback: str | None = None
    pickle: bytes | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> ExceptionInfo:
        fields = _fields(value, where)
        return cls(_maybe(fields, "types", list, where), _maybe(fields, "type", str, where),
                   _maybe(fields, "message", str, where), _maybe(fields, "traceback", str, where),
                   _maybe(fields, "pickle", bytes, where))

    def to_wire(self) -> dict[str, Any]:
        return {"types": self.types, "type": self.type, "message": self.message, "traceback": self.traceback,
                "pickle": self.pickle}


class Output(NamedTuple):
    """What a task printed, head and tail, on each stream the worker could capture."""

    stdout: str | None = None
    stderr: str | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Output:
        fields = _fields(value, where)
        return cls(_maybe(fields, "stdout", str, where), _maybe(fields, "stderr", str, where))

    def to_wire(self) -> dict[str, Any]:
        return {"stdout": self.stdout, "stderr": self.stderr}

    def streams(self) -> dict[str, str]:
        """The captured streams by name."""
        return {name: text for name, text in (("stdout", self.stdout), ("stderr", self.stderr)) if text is not None}


class Report(NamedTuple):
    """How one leased task ended in the worker: its pickled result, or the exception f raised."""

    task: int
    number: int
    result: bytes | None = None
    exception: ExceptionInfo | None = None
    output: Output | None = None
    usage: dict[str, Any] | None = None  # seconds, cpu_seconds, max_rss_kb (not checked)

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Report:
        fields = _fields(value, where)
        exception, output = fields.get("exception"), fields.get("output")
        return cls(_get(fields, "task", int, where), _get(fields, "number", int, where),
                   _maybe(fields, "result", bytes, where),
                   None if exception is None else ExceptionInfo.from_wire(exception, f"{where}['exception']"),
                   None if output is None else Output.from_wire(output, f"{where}['output']"),
                   _maybe(fields, "usage", dict, where))

    def to_wire(self) -> dict[str, Any]:
        return {"task": self.task, "number": self.number, "result": self.result,
                "exception": None if self.exception is None else self.exception.to_wire(),
                "output": None if self.output is None else self.output.to_wire(), "usage": self.usage}


class Welcome(NamedTuple):
    """What a worker the server accepted needs: the pickled function and namespace, and its settings."""

    function: bytes
    heartbeat_interval: float
    heartbeat_timeout: float
    max_result_size: int
    output_limit: int

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Welcome:
        fields = _fields(value, where)
        return cls(_get(fields, "function", bytes, where), _number(fields, "heartbeat_interval", where),
                   _number(fields, "heartbeat_timeout", where), _get(fields, "max_result_size", int, where),
                   _get(fields, "output_limit", int, where))

    def to_wire(self) -> dict[str, Any]:
        return {"function": self.function, "heartbeat_interval": self.heartbeat_interval,
                "heartbeat_timeout": self.heartbeat_timeout, "max_result_size": self.max_result_size,
                "output_limit": self.output_limit}


class LeasedTask(NamedTuple):
    """One task of a lease: which task, which attempt of it, and its pickled argument."""

    task: int
    number: int
    args: Argument

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> LeasedTask:
        fields = _fields(value, where)
        args = fields.get("args")
        if not isinstance(args, (bytes, memoryview)):
            raise MalformedMessage(f"{where}['args'] is a {type(args).__name__}, not bytes")
        return cls(_get(fields, "task", int, where), _get(fields, "number", int, where), args)

    def to_wire(self) -> dict[str, Any]:
        return {"task": self.task, "number": self.number, "args": self.args}


class Running(NamedTuple):
    """The task a worker runs, and for how many seconds it has run."""

    task: int
    number: int
    elapsed: float

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Running:
        fields = _fields(value, where)
        return cls(_get(fields, "task", int, where), _get(fields, "number", int, where),
                   _get(fields, "elapsed", float, where))

    def to_wire(self) -> dict[str, Any]:
        return {"task": self.task, "number": self.number, "elapsed": self.elapsed}


# -- requests, each with its route --------------------------------------------------------------


class Hello(NamedTuple):
    """A worker's first call: where it runs, and its process group there (to end leftovers by)."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_HELLO
    worker: str
    host: str | None = None
    process_group: int | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Hello:
        fields = _fields(value, where)
        return cls(_get(fields, "worker", str, where), _maybe(fields, "host", str, where),
                   _maybe(fields, "process_group", int, where))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "host": self.host, "process_group": self.process_group}


class LeaseRequest(NamedTuple):
    """The reports of the worker's last batch, and its ask for the next."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_LEASE
    worker: str
    reports: tuple[Report, ...] = ()

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> LeaseRequest:
        fields = _fields(value, where)
        return cls(_get(fields, "worker", str, where), _reports(fields, where))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "reports": [report.to_wire() for report in self.reports]}


class ReportRequest(NamedTuple):
    """Reports of part of a batch, sent before the batch ends (they grew large or old)."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_REPORT
    worker: str
    reports: tuple[Report, ...] = ()

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> ReportRequest:
        fields = _fields(value, where)
        return cls(_get(fields, "worker", str, where), _reports(fields, where))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "reports": [report.to_wire() for report in self.reports]}


class Heartbeat(NamedTuple):
    """A sign of life, naming the task the worker runs (None: it runs none)."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_HEARTBEAT
    worker: str
    running: Running | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Heartbeat:
        fields = _fields(value, where)
        running = fields.get("running")
        return cls(_get(fields, "worker", str, where),
                   None if running is None else Running.from_wire(running, f"{where}['running']"))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "running": None if self.running is None else self.running.to_wire()}


class SetupFailed(NamedTuple):
    """The worker could not load the function: what loading it raised."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_SETUP_FAILED
    worker: str
    error: ExceptionInfo | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> SetupFailed:
        fields = _fields(value, where)
        error = fields.get("error")
        return cls(_get(fields, "worker", str, where),
                   None if error is None else ExceptionInfo.from_wire(error, f"{where}['error']"))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "error": None if self.error is None else self.error.to_wire()}


class TaskDied(NamedTuple):
    """The worker's parent names the task its child was running as it died, and the child's peak memory."""

    @property
    def route(self) -> str:
        return protocol.ROUTE_TASK_DIED
    worker: str
    task: int
    number: int
    max_rss_kb: int | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> TaskDied:
        fields = _fields(value, where)
        return cls(_get(fields, "worker", str, where), _get(fields, "task", int, where),
                   _get(fields, "number", int, where), _maybe(fields, "max_rss_kb", int, where))

    def to_wire(self) -> dict[str, Any]:
        return {"worker": self.worker, "task": self.task, "number": self.number, "max_rss_kb": self.max_rss_kb}


REQUESTS: Mapping[str, type[Request]] = {
    protocol.ROUTE_HELLO: Hello, protocol.ROUTE_LEASE: LeaseRequest, protocol.ROUTE_REPORT: ReportRequest,
    protocol.ROUTE_HEARTBEAT: Heartbeat, protocol.ROUTE_SETUP_FAILED: SetupFailed, protocol.ROUTE_TASK_DIED: TaskDied}


# -- replies ------------------------------------------------------------------------------------


class HelloReply(NamedTuple):
    """The answer to a hello: a welcome, or none (the worker should exit, or ask again after ``retry`` seconds)."""

    welcome: Welcome | None = None
    retry: float | None = None  # the worker's id is not known yet: its submission is still under way

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> HelloReply:
        fields = _fields(value, where)
        if _get(fields, "accepted", bool, where):
            return cls(Welcome.from_wire(fields, where))
        return cls(retry=None if fields.get("retry") is None else _number(fields, "retry", where))

    def to_wire(self) -> dict[str, Any]:
        if self.welcome is None:
            return {"accepted": False, "retry": self.retry}
        return {"accepted": True, **self.welcome.to_wire()}


class LeaseReply(NamedTuple):
    """The worker's next batch; empty when it should exit, or, with ``wait``, ask again after that
    many seconds (a growing sweep has no task for it yet)."""

    leases: tuple[LeasedTask, ...] = ()
    wait: float | None = None

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> LeaseReply:
        fields = _fields(value, where)
        leases = _maybe(fields, "leases", list, where) or []
        wait = None if fields.get("wait") is None else _number(fields, "wait", where)
        return cls(tuple(LeasedTask.from_wire(lease, f"{where}['leases'][{index}]")
                         for index, lease in enumerate(leases)), wait)

    def to_wire(self) -> dict[str, Any]:
        return {"leases": [lease.to_wire() for lease in self.leases], "wait": self.wait}


class HeartbeatReply(NamedTuple):
    """Whether the server still counts on a task the worker holds (False: it was written off)."""

    current: bool

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> HeartbeatReply:
        return cls(_get(_fields(value, where), "current", bool, where))

    def to_wire(self) -> dict[str, Any]:
        return {"current": self.current}


class Ack(NamedTuple):
    """The answer to a report, a failed set-up or a task's death: received, nothing more to say."""

    @classmethod
    def from_wire(cls, value: object, where: str = "message") -> Ack:
        _fields(value, where)
        return cls()

    def to_wire(self) -> dict[str, Any]:
        return {}
