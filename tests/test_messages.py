"""The channel's typed messages: each reads back what it writes, through the channel's own encoding."""
from __future__ import annotations

import re
from typing import Any

import pytest

from sheepdog_drmaa import messages, protocol

FAILURE = messages.ExceptionInfo(types=["builtins.ValueError"], type="ValueError", message="m", traceback="t",
                                 pickle=b"p")
REPORT = messages.Report(3, 1, result=b"r", output=messages.Output(stdout="out"), usage={"seconds": 1.0})
WELCOME = messages.Welcome(b"f", heartbeat_interval=10, heartbeat_timeout=60.0, max_result_size=1 << 20,
                           output_limit=4096)


@pytest.mark.parametrize("message", [
    messages.Hello("w1", "node1", 12), messages.Hello("w1"),
    messages.LeaseRequest("w1", (REPORT, messages.Report(4, 2, exception=FAILURE))), messages.LeaseRequest("w1"),
    messages.ReportRequest("w1", (REPORT,)), messages.Heartbeat("w1", messages.Running(3, 1, 0.5)),
    messages.Heartbeat("w1"), messages.SetupFailed("w1", FAILURE), messages.TaskDied("w1", 3, 1, 2048),
    messages.HelloReply(WELCOME), messages.HelloReply(retry=0.5), messages.HelloReply(),
    messages.LeaseReply((messages.LeasedTask(3, 1, b"args"),)), messages.LeaseReply(),
    messages.HeartbeatReply(True), messages.Ack(),
], ids=lambda message: type(message).__name__)
def test_each_message_reads_back_what_it_writes(message: Any) -> None:
    read_back = type(message).from_wire(protocol.decode(protocol.encode(message.to_wire())))
    assert type(read_back) is type(message) and read_back == message


def test_every_route_reads_its_own_request() -> None:
    requests: list[messages.Request] = [messages.Hello("w1"), messages.LeaseRequest("w1"), messages.ReportRequest("w1"),
                                        messages.Heartbeat("w1"), messages.SetupFailed("w1"),
                                        messages.TaskDied("w1", 3, 1)]
    assert {request.route: type(request) for request in requests} == messages.REQUESTS


def test_a_large_argument_travels_beside_the_leases_pickle_and_arrives_as_a_view_of_the_body() -> None:
    argument = b"x" * 100_000
    reply = messages.LeaseReply((messages.LeasedTask(3, 1, protocol.out_of_band(argument)),))
    parts = protocol.encode_parts(reply.to_wire())
    assert len(parts) == 4 and bytes(parts[3]) == argument  # the pickle, then the argument, each with its length
    leased = messages.LeaseReply.from_wire(protocol.decode(b"".join(parts))).leases[0]
    assert isinstance(leased.args, memoryview) and bytes(leased.args) == argument


def test_a_hello_reply_keeps_its_wire_form() -> None:
    assert messages.HelloReply(retry=0.5).to_wire() == {"accepted": False, "retry": 0.5}
    assert messages.HelloReply(WELCOME).to_wire() == {
        "accepted": True, "function": b"f", "heartbeat_interval": 10, "heartbeat_timeout": 60.0,
        "max_result_size": 1 << 20, "output_limit": 4096}


@pytest.mark.parametrize("kind, value, problem", [
    (messages.Report, {"task": 0, "number": 1, "output": {"stdout": 3}}, "message['output']['stdout'] is a int"),
    (messages.LeaseRequest, {"worker": "w1", "reports": [{"task": 0, "number": 1}, {"task": True, "number": 1}]},
     "message['reports'][1]['task'] is a bool, not a int"),
    (messages.Heartbeat, {"worker": "w1", "running": {"task": 0, "number": 1, "elapsed": 1}},
     "message['running']['elapsed'] is a int, not a float"),
    (messages.LeaseReply, {"leases": [{"task": 0, "number": 1, "args": "text"}]}, "['args'] is a str, not bytes"),
    (messages.HelloReply, {"accepted": True, "function": b"f"}, "message['heartbeat_interval'] is a NoneType"),
])
def test_a_malformed_message_is_refused_naming_the_field(kind: Any, value: dict[str, Any], problem: str) -> None:
    with pytest.raises(messages.MalformedMessage, match=re.escape(problem)):
        kind.from_wire(value)
