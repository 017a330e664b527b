"""A sweep driven by a process of its own: starting that driver (``detach=True``, ``resume``), and
cancelling a sweep whatever process drives it.

The caller holds the sweep's claim and hands it over: the driver, started in a session of its own
with the claim's token on its stdin, takes the claim from that token (one compare-and-set in the
store), so that exactly one process drives the sweep, and the caller may exit at once after.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NamedTuple

from . import claims
from .errors import DriverFailed, SheepdogError, SweepLocked
from .model import Claim, SweepPhase, SweepRecord
from .options import from_stored
from .store import ClaimLost, Store, private_directory

log = logging.getLogger(__name__)

DRIVER_LOG = "driver.log"  # in the sweep's log directory
HANDOVER_MARGIN_SECONDS = 60.0  # beyond outage_wait, for a driver to open the scheduler and start the sweep
READY = b"ready"  # what the driver writes on the pipe it was given once it runs the sweep
CANCEL_WAIT_SECONDS = 60.0
LOG_TAIL_LINES = 20
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DriverStarted(NamedTuple):
    """The process now driving a sweep, and where it logs."""

    pid: int
    log_path: str


def start_driver(store: Store, record: SweepRecord, holder: Claim) -> DriverStarted:
    """Start a process to drive the stored sweep ``record``, whose claim ``holder`` (this process)
    holds, and return once that process says it took the claim and started the sweep. DriverFailed,
    with its log's last lines, if it stops before that, or has not started it within the scheduler's
    outage_wait and a margin (it is then stopped). Interrupted (Ctrl-C), the driver is stopped too:
    the sweep is left as it was, resumable."""
    if record.launch is None or not record.launch.options:
        raise SheepdogError(f"sweep {label(record)} was stored without what another process needs to drive it (by "
                            "an earlier version, or run with backend= a Backend object); run its script again with "
                            f"name={record.name or record.id!r} to go on with it")
    options = from_stored(record.launch.options)
    log_path = os.path.join(private_directory(options.log_directory(record.id)), DRIVER_LOG)
    # The caller's environment, with the scheduler's settings as the sweep was started with them (a
    # resume from a shell without them must not fall back to another scheduler).
    environment = {**os.environ, **record.launch.scheduler_environment}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (environment.get("PYTHONPATH"), _PACKAGE_ROOT) if p)
    ready, ready_for_driver = os.pipe()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "sheepdog_drmaa.detached", os.path.abspath(store.path), record.id,
             str(ready_for_driver)], stdin=subprocess.PIPE, stdout=fd, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=(ready_for_driver,), cwd=record.launch.working_directory,
            env=environment)
    except OSError as error:
        os.close(ready)
        raise DriverFailed(f"cannot start a driver for sweep {label(record)}: {error}") from None
    finally:
        os.close(fd)
        os.close(ready_for_driver)
    # Reaped by a thread of its own when it ends, so that it lingers neither as a zombie (which looks
    # alive to a claim check) nor as a Popen warned about when collected while it runs.
    threading.Thread(target=process.wait, name=f"sheepdog-reap-{process.pid}", daemon=True).start()
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError), process.stdin:  # the token only; a driver gone at once says so below
        process.stdin.write(f"{holder.token}\n".encode())
    try:
        _wait_until_ready(ready, process, record, log_path, options.outage_wait + HANDOVER_MARGIN_SECONDS)
    except BaseException:
        _stop(process)
        raise
    finally:
        os.close(ready)
    log.info("sweep %s is driven by process %d, which logs to %s", label(record), process.pid, log_path)
    return DriverStarted(process.pid, log_path)


def _wait_until_ready(ready: int, process: subprocess.Popen[bytes], record: SweepRecord, log_path: str,
                      within: float) -> None:
    """Until the driver writes that it runs the sweep; DriverFailed if it closes its end first (it
    stopped) or says nothing ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DriverFailed(f"the driver of sweep {label(record)} did not start the sweep within {within:g} s "
                               f"and was stopped; its log {log_path} ends:\n{_tail(log_path)}")
        readable, _, _ = select.select([ready], [], [], min(left, 1.0))
        if not readable:
            continue
        if os.read(ready, 16).startswith(READY):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)  # its log is complete once it has exited
        raise DriverFailed(f"the driver of sweep {label(record)} stopped before it started the sweep (exit status "
                           f"{process.returncode}); its log {log_path} ends:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a driver that has not started the sweep, with anything it started, and wait a while for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def resume(store: Store, record: SweepRecord) -> DriverStarted | None:
    """Drive on, in a process of its own, a sweep nobody drives (its driver killed, its host rebooted,
    or it was cancelled or interrupted); None if every task is done already. SweepLocked, changing
    nothing, if a live process drives it."""
    if claims.is_live(record.owner):
        assert record.owner is not None
        raise SweepLocked(f"sweep {label(record)} is driven by {record.owner.describe()}; nothing was changed "
                          f"(`sheepdog-drmaa attach {label(record)}` to watch it)")
    if record.state == SweepPhase.FINISHED.value:
        return None
    me = claims.for_this_process()
    try:
        try:
            store.take_claim(record, me)
        except ClaimLost:
            raise SweepLocked(f"sweep {label(record)} was just taken on by another process; nothing was "
                              "changed") from None
        try:
            return start_driver(store, dataclasses.replace(record, owner=me), me)
        except BaseException:
            store.release_claim(record.id, me.token)
            raise
    finally:
        claims.let_go(me)


def cancel(store: Store, record: SweepRecord, timeout: float = CANCEL_WAIT_SECONDS) -> list[str]:
    """Stop the sweep's driver (on this host, checked to be that very process; waiting ``timeout``
    seconds for it), then terminate any job it left; return the ids of the jobs terminated here."""
    owner = record.owner
    if owner is not None and owner.host == socket.gethostname() and claims.is_live(owner):
        def released() -> bool:
            current = store.sweep(record.id)
            return current is None or current.owner is None or current.owner.token != owner.token
        if not claims.stop_client(owner, released, timeout):
            raise SweepLocked(f"sweep {label(record)} is run by {owner.describe()}, which did not stop within "
                              f"{timeout:g} s of SIGINT; stop it yourself (kill {owner.pid})")
    # A driver on another host cannot be signalled from here: its jobs go now, and it stops by itself
    # within claims.CLAIM_REFRESH_SECONDS, when it finds its claim released.
    ended: list[str] = []
    if store.live_workers(record.id):  # the scheduler is opened only when there is something to remove
        from .backends import open_backend
        backend = open_backend(record.options.get("backend", "auto"))
        try:
            ended = claims.end_leftover_workers(store, record.id, backend)
        finally:
            backend.close()
    store.release_claim(record.id, None, SweepPhase.CANCELLED)
    return ended


def label(record: SweepRecord) -> str:
    return record.name or record.id


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-LOG_TAIL_LINES:]).rstrip() or "(empty)"
    except OSError as error:
        return f"(not readable: {error.strerror})"
