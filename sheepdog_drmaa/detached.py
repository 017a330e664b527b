"""The process that drives a detached or resumed sweep, from the store alone:
``python -m sheepdog_drmaa.detached STORE SWEEP_ID READY_FD``, with the handed-over claim's token
on stdin; it writes ``ready`` on READY_FD once it runs the sweep (closing it unwritten says it could not).

It runs in a session of its own, with stdin closed and its output in the sweep's log directory,
so that a closed terminal (SIGHUP) or the exit of the process that started it leaves it running.
SIGTERM and ``sheepdog-drmaa cancel`` (SIGINT) stop the sweep with its jobs, as Ctrl-C stops ``map``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from . import claims
from .control import READY
from .errors import SheepdogError, SweepCancelled
from .model import SweepPhase, SweepRecord, TaskState
from .options import from_stored
from .starting import make_run, open_checked_backend, termination_cancels
from .store import ClaimLost, Store

log = logging.getLogger("sheepdog_drmaa.detached")


def main(argv: Sequence[str] | None = None) -> int:
    """Take the sweep on from the token given on stdin, and drive it to its end. Exit status 0 once
    the sweep ended (done, failed or cancelled: the store says which), 1 if it could not be driven."""
    store_path, sweep_id, ready = argv if argv is not None else sys.argv[1:]
    token = sys.stdin.readline().strip()
    with open(os.devnull, "rb") as nothing:
        os.dup2(nothing.fileno(), sys.stdin.fileno())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal to lose; belt and braces beside the new session
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("process %d on %s drives sweep %s of %s", os.getpid(), socket.gethostname(), sweep_id,
             store_path)
    store = Store(store_path)
    try:
        return _drive(store, sweep_id, token, int(ready))
    except SweepCancelled as cancelled:
        log.info("%s", cancelled)
        return 0
    except (SheepdogError, ClaimLost, OSError) as error:
        log.error("sweep %s cannot be driven: %s", sweep_id, error)
        return 1
    finally:
        store.close()


def _drive(store: Store, sweep_id: str, token: str, ready: int) -> int:
    record = store.sweep(sweep_id)
    if record is None or record.owner is None or record.owner.token != token:
        raise SheepdogError(f"sweep {sweep_id} was not handed to this process (it is gone, or another process "
                            "took it on first)")
    if record.launch is None:
        raise SheepdogError(f"sweep {sweep_id} was stored without the options a driver needs")
    launch = record.launch
    options = dataclasses.replace(from_stored(launch.options), progress=False, detach=False)
    os.chdir(launch.working_directory)
    me = claims.for_this_process()
    store.take_claim(record, me)
    record = dataclasses.replace(record, owner=me)
    with contextlib.ExitStack() as undo:  # should the run not start: the claim given back, the scheduler closed
        undo.callback(claims.let_go, me)
        undo.callback(store.release_claim, record.id, me.token)
        done = store.tasks_in_state(record.id, TaskState.DONE.value)
        if len(done) == record.n_tasks:
            log.info("every task of sweep %s is done already", record.name or record.id)
            undo.pop_all()
            store.release_claim(record.id, me.token, SweepPhase.FINISHED)
            claims.let_go(me)
            _say_ready(ready)
            return 0
        backend, host, bind = open_checked_backend(options)
        undo.callback(backend.close)
        claims.end_leftover_workers(store, record.id, backend)
        run = make_run(store, record, options, launch, store.function(record.id), backend, host, bind, done, me)
        undo.pop_all()
    if store.set_sweep_state(record.id, SweepPhase.RUNNING, me.token):
        _say_ready(ready)
    else:  # cancelled in between: the run stops at once, its claim gone
        os.close(ready)
        run.request_cancel(f"sweep {_label(record)} was cancelled before its driver started it")
    log.info("sweep %s: %d of %d tasks done before this driver; driving the rest", _label(record), len(done),
             record.n_tasks)
    with termination_cancels(run, "the sweep's driver", (signal.SIGTERM, signal.SIGINT)):
        run.drive()
    log.info("sweep %s ended: %s", _label(record), run.counts())
    return 0


def _say_ready(ready: int) -> None:
    """Tell the process that started this one that the sweep runs: it may return, and exit."""
    with contextlib.suppress(OSError):  # it may have exited already: nothing waits for the word
        os.write(ready, READY)
    os.close(ready)


def _label(record: SweepRecord) -> str:
    return record.name or record.id


if __name__ == "__main__":
    sys.exit(main())
