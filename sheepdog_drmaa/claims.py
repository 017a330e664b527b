"""Who runs a sweep: the claim a live client holds on it, how a dead claimant is recognised, stopping it.

A claim names a process (pid, host, and the process's start time, so that a reused pid is not
taken for the client) and carries a random token. The store changes a claim only by comparing
that token (one SQL statement), so of two clients racing for one sweep exactly one wins.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from typing import TYPE_CHECKING, Callable

from .model import Claim, SweepPhase, SweepRecord

if TYPE_CHECKING:  # only for annotations: claims.py itself needs neither the store nor a scheduler
    from .backends import Backend
    from .store import Store

log = logging.getLogger(__name__)

# A client refreshes its claim every CLAIM_REFRESH_SECONDS; one from another host that has been
# silent for STALE_CLAIM_SECONDS is taken to be dead (its process cannot be checked from here).
CLAIM_REFRESH_SECONDS = 30.0
STALE_CLAIM_SECONDS = 180.0

# The phases of a sweep that a client is taking forward.
UNDER_WAY = (SweepPhase.CREATED.value, SweepPhase.RUNNING.value)

# Tokens of the claims this process holds now: a claim of this very process is live only while its
# run is (one left in the store by a run that could not release it is not).
_held: set[str] = set()


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), or None if it is gone or unknown."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (field 3 of /proc/PID/stat is "Z"): a driver
    killed after its parent exited stays so until init reaps it, and must not look alive meanwhile."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "Z"


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat from the third (the state) on; [] if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    return text[text.rfind(")") + 2:].split()


def for_this_process() -> Claim:
    """A fresh claim for the calling process (a new token each time: one per run), held until let_go."""
    pid = os.getpid()
    claim = Claim(pid=pid, host=socket.gethostname(), started=process_start(pid), token=secrets.token_hex(16),
                  seen=time.time())
    _held.add(claim.token or "")
    return claim


def let_go(claim: Claim) -> None:
    """This process no longer runs the sweep of ``claim``, whether or not the store could be told."""
    _held.discard(claim.token or "")


def is_live(claim: Claim | None, now: float | None = None) -> bool:
    """Whether the claimant may still be running the sweep.

    On this host the process is checked (alive, and started when the claim says); on another
    host only the age of the claim's last refresh can tell.
    """
    if claim is None:
        return False
    if claim.host != socket.gethostname():
        return (time.time() if now is None else now) - claim.seen <= STALE_CLAIM_SECONDS
    if claim.pid == os.getpid():
        return claim.token in _held
    try:
        os.kill(claim.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's: the start time below still tells
    if _is_zombie(claim.pid):
        return False
    started = process_start(claim.pid)
    return started is None or claim.started is None or started == claim.started


def driver_gone(record: SweepRecord) -> bool:
    """Whether the sweep is stored as under way while no live client drives it (killed, or its host
    rebooted): it is interrupted, whatever the store still says."""
    return record.state in UNDER_WAY and not is_live(record.owner)


def has_ended(record: SweepRecord) -> bool:
    """Whether nothing more will happen to the sweep until someone runs it again."""
    return record.state not in UNDER_WAY or driver_gone(record)


def end_leftover_workers(store: Store, sweep_id: str, backend: Backend) -> list[str]:
    """Remove the workers an earlier client of the sweep started and did not see end; return their ids.

    A named sweep resumed after its client died, or cancelled from the command line, must not
    leave them running a task a second time beside the new ones.
    """
    leftovers = store.live_workers(sweep_id)
    if leftovers:
        log.info("terminating %d workers left by an earlier client of sweep %s", len(leftovers), sweep_id)
        backend.terminate_leftovers(leftovers)
        store.record_workers_ended(sweep_id, [worker_id for worker_id, _, _ in leftovers])
    return [worker_id for worker_id, _, _ in leftovers]


def stop_client(claim: Claim, released: Callable[[], bool], timeout: float) -> bool:
    """Ask the live client that holds ``claim`` (on this host) to cancel with SIGINT, as Ctrl-C does,
    and wait until ``released()`` says it let go or it is gone. False if it is not on this host or
    does not stop in time.

    Only a process shown to be the client is signalled: its pid and its start time both match the
    claim's. One that cannot be shown to be it (the claim has no start time, as those of
    sheepdog_drmaa 0.1.0, or this host cannot read it) is left alone, said at WARNING, and True is
    returned: there is nothing to wait for.
    """
    if claim.host != socket.gethostname() or not is_live(claim):
        return not is_live(claim)
    if not _signal_client(claim, signal.SIGINT):
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if released() or not is_live(claim):
            return True
        time.sleep(0.2)
    return False


def _signal_client(claim: Claim, signum: int) -> bool:
    """Send ``signum`` to the claim's client if the process with its pid is shown to be it; whether sent.

    Through a pidfd where the kernel has them (Linux 5.3): the start time read after opening it is
    that of the process it holds, or of a later one with its pid, so a pid reused in between is
    never signalled.
    """
    try:
        pidfd: int | None = os.pidfd_open(claim.pid)
    except ProcessLookupError:
        return False  # gone
    except (AttributeError, OSError):  # no pidfd here
        pidfd = None
    try:
        started = process_start(claim.pid)
        if claim.started is None or started is None:
            reason = ("its claim records no start time (sheepdog_drmaa 0.1.0 wrote none)" if claim.started is None
                      else "its start time cannot be read here")
            log.warning("%s is not signalled: %s, so it cannot be shown to be the sweep's client; if it is, stop it "
                        "yourself", claim.describe(), reason)
            return False
        if started != claim.started:
            return False  # the pid is another process's now
        if pidfd is None:
            os.kill(claim.pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
