"""The worker's loop, in the forked child: say hello, load the function, then lease batches of
tasks, run them and report, until the server has no more work.

Standard library, cloudpickle, protocol, messages and this package only.
"""
from __future__ import annotations

import functools
import mmap
import os
import sys
import time
from typing import Any, Callable

import cloudpickle

from .. import messages, protocol
from .channel import Channel, ChannelError, Heartbeat, Outbox, configuration
from .task import CapturedOutput, RunningTask, describe_exception, run_task


def serve(shared: mmap.mmap | None = None) -> int:
    """Lease and run tasks until the server has none left; return the exit status.

    ``shared``: memory the parent reads, should this process die, to learn which task it ran.
    """
    try:
        url, key, worker_id = configuration()
    except (KeyError, OSError, ValueError) as error:
        print(f"sheepdog worker: incomplete configuration: {error!r}", file=sys.stderr)
        return protocol.EXIT_BAD_CONFIGURATION
    channel = Channel(url, key, worker_id)
    try:
        welcome = say_hello(channel).welcome
        if welcome is None:
            return protocol.EXIT_OK
        function = load_function(channel, welcome)
        if function is None:
            return protocol.EXIT_BAD_CONFIGURATION
        running, outbox = RunningTask(shared), Outbox()
        Heartbeat(Channel(url, key, worker_id), welcome.heartbeat_interval, welcome.heartbeat_timeout, running,
                  outbox)
        run_batches(channel, function, welcome, running, outbox)
        return protocol.EXIT_OK
    except ChannelError as error:
        print(f"sheepdog worker {worker_id}: {error}", file=sys.stderr)
        return protocol.EXIT_SERVER_UNREACHABLE


def say_hello(channel: Channel) -> messages.HelloReply:
    """The server's answer to this worker's hello, asking again while the server says its id is
    not known yet (the client is still registering the submission this worker came from)."""
    deadline = time.monotonic() + protocol.HELLO_RETRY_LIMIT
    hello = messages.Hello(channel.worker_id, os.uname().nodename, os.getpgid(0))
    while True:
        reply = channel.ask(hello, messages.HelloReply.from_wire)
        if reply.welcome is not None or reply.retry is None or time.monotonic() > deadline:
            return reply
        time.sleep(reply.retry)


def load_function(channel: Channel, welcome: messages.Welcome) -> Callable[..., Any] | None:
    """The function, with the namespace it was sent with; None, once the server is told why, if it
    cannot be loaded here (its module is not importable here, most often)."""
    try:
        loaded: tuple[Callable[..., Any], dict[str, Any]] = cloudpickle.loads(welcome.function)
    except Exception as error:
        described = describe_exception(error, welcome.max_result_size)
        print(f"sheepdog worker {channel.worker_id}: cannot load the function:\n{described.traceback}",
              file=sys.stderr)
        channel.ask(messages.SetupFailed(channel.worker_id, described), messages.Ack.from_wire)
        return None
    function, namespace = loaded
    if namespace:
        getattr(function, "__globals__", {}).update(namespace)
    return function


def run_batches(channel: Channel, function: Callable[..., Any], welcome: messages.Welcome, running: RunningTask,
                outbox: Outbox) -> None:
    """Lease a batch, run its tasks in order and report them with the next lease, until a lease is
    empty (waiting and asking again while the server says to: a growing sweep's tasks are to come)."""
    output = CapturedOutput(welcome.output_limit)
    while True:
        with outbox.sending:
            reply = channel.ask(messages.LeaseRequest(channel.worker_id, outbox.take()), messages.LeaseReply.from_wire)
        batch = reply.leases
        if not batch:
            if reply.wait is None:
                return
            time.sleep(reply.wait)
            continue
        for position, lease in enumerate(batch):
            running.start(lease.task, lease.number, server_knows=position == 0)
            outbox.add(output.run(functools.partial(run_task, function, lease, welcome.max_result_size)))
            running.stop()
            if position + 1 < len(batch) and outbox.due():
                with outbox.sending:
                    channel.ask(messages.ReportRequest(channel.worker_id, outbox.take()), messages.Ack.from_wire)
