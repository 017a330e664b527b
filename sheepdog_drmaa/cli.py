"""``sheepdog-drmaa`` / ``python -m sheepdog_drmaa``: look at stored sweeps, fetch results, cancel.

Plain text for a terminal; ``--json`` for scripts. ``--store PATH`` on every command.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import claims, control
from .errors import SheepdogError
from .handle import Sweep
from .model import SweepPhase, SweepRecord
from .options import DEFAULT_STORE, ENV_PREFIX
from .records import UNLOADABLE, TaskFailure
from .store import Store, check_readable


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, default=repr) if args.json else text)


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.store, readonly=True)
    rows: list[dict[str, Any]] = []
    for record in store.sweeps():
        gone = claims.driver_gone(record)
        rows.append({"name": record.name, "id": record.id, "state": _state(record, gone), "driver_gone": gone,
                     "tasks": record.n_tasks, "age_seconds": time.time() - record.created,
                     **Sweep(store, record).status()})
    lines = [f"{'NAME':24} {'STATE':25} {'TASKS':>7} {'DONE':>7} {'FAILED':>7} {'RUNNING':>7} {'QUEUED':>7} AGE"]
    lines += [f"{(r['name'] or r['id']):24} {_shown(r['state'], r['driver_gone']):25} {r['tasks']:7} {r['done']:7} "
              f"{r['failed']:7} {r['running']:7} {r['queued']:7} {_age(r['age_seconds'])}" for r in rows]
    _emit(args, rows, "\n".join(lines) if rows else f"no sweeps in {args.store}")
    return 0


def _state(record: SweepRecord, driver_gone: bool) -> str:
    """The sweep's phase as it is: one stored as running that nobody drives is interrupted."""
    return SweepPhase.INTERRUPTED.value if driver_gone else str(record.state)


def _shown(state: str, driver_gone: bool) -> str:
    return f"{state} (driver gone)" if driver_gone else state


def _open(args: argparse.Namespace) -> Sweep:
    return Sweep.open(args.name, store=args.store)


def cmd_status(args: argparse.Namespace) -> int:
    sweep = _open(args)
    attempts = sweep.attempts()
    by_cause: dict[str, int] = {}
    for attempt in attempts:
        if attempt.cause and attempt.cause != "result":
            by_cause[attempt.cause] = by_cause.get(attempt.cause, 0) + 1
    running = sorted({a.worker for a in attempts if a.ended is None})
    retried = len({a.task for a in attempts if a.number > 1})
    record = sweep.record
    counts = sweep.status()
    gone = claims.driver_gone(record)
    data: dict[str, Any] = {"name": record.name, "id": record.id, "state": _state(record, gone),
            "driver_gone": gone, "tasks": record.n_tasks,
            "counts": counts, "running_jobs": running, "retried_tasks": retried,
            "failed_attempts_by_cause": by_cause,
            "owner": record.owner and f"{record.owner.pid}@{record.owner.host}"}
    text = [f"sweep {record.name or record.id} ({record.id}): {_shown(data['state'], gone)}, {record.n_tasks} tasks",
            "  " + ", ".join(f"{k} {v}" for k, v in counts.items()),
            f"  retried tasks: {retried}",
            "  failed attempts by cause: " + (", ".join(f"{k} {v}" for k, v in sorted(by_cause.items())) or "none"),
            "  running jobs: " + (" ".join(running) or "none")]
    if gone:
        label = record.name or record.id
        again = (f"`sheepdog-drmaa resume {label}` to drive it on" if record.launch is not None else
                 f"run the script again with name={record.name!r} to resume it" if record.name else "")
        who = f"its driver ({data['owner']}) is gone" if data["owner"] else "nobody drives it"
        text.append(f"  {who}: " + (f"{again}, or " if again else "")
                    + f"`sheepdog-drmaa cancel {label}` to remove the jobs it left")
    elif data["owner"]:
        text.append(f"  driven by: process {data['owner']}")
    _emit(args, data, "\n".join(text))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until the sweep ends; the exit status says how (see :func:`_how_it_ended`)."""
    sweep = _open(args)
    sweep.wait()
    return _how_it_ended(args, sweep)


def cmd_attach(args: argparse.Namespace) -> int:
    """A live progress bar until the sweep ends; Ctrl-C leaves it running (also while the store opens)."""
    try:
        sweep = _open(args)
        sweep.watch()
    except KeyboardInterrupt:
        print(f"left sweep {args.name}; it goes on (`sheepdog-drmaa attach {args.name}` to watch it again)",
              file=sys.stderr)
        return 0
    return _how_it_ended(args, sweep)


def _how_it_ended(args: argparse.Namespace, sweep: Sweep) -> int:
    """Say how the sweep ended; 0 when every task is done, 1 when some failed, 2 when it was cancelled,
    interrupted, or nobody drives it any more."""
    record = sweep.record
    gone = claims.driver_gone(record)
    state = _state(record, gone)
    counts = sweep.status()
    code = {SweepPhase.FINISHED.value: 0, SweepPhase.FAILED.value: 1}.get(state, 2)
    shown_counts = ", ".join(f"{k} {v}" for k, v in counts.items())
    _emit(args, {"name": record.name, "id": record.id, "state": state, "driver_gone": gone, "counts": counts,
                 "exit_status": code}, f"sweep {record.name or record.id}: {_shown(state, gone)}; {shown_counts}")
    return code


def cmd_failures(args: argparse.Namespace) -> int:
    failures = _open(args).failures()
    data = [{"index": f.index, "args": repr(f.args), "cause": f.cause, "attempts": f.attempts, "summary": f.summary,
             "traceback": f.traceback, "history": [a.__dict__ for a in f.history]} for f in failures]
    _emit(args, data, "\n".join(f.describe() for f in failures) or "no failed tasks")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Every result that can be loaded here; each task that failed or cannot be loaded is named on stderr."""
    sweep = _open(args)
    loaded: dict[int, Any] = {}
    failed: list[TaskFailure] = []
    for index, value in sweep.as_completed():
        if isinstance(value, TaskFailure):
            failed.append(value)
            if value.cause != UNLOADABLE:
                loaded[index] = value  # a task that failed on the cluster: its record, as always
        else:
            loaded[index] = value
    if args.pickle:
        fd = os.open(args.pickle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(loaded, handle)
        print(f"{len(loaded)} results written to {args.pickle}", file=sys.stderr)
    else:
        for index, value in loaded.items():
            print(json.dumps({"index": index, "result": value}, default=repr))
    unloadable = [f for f in failed if f.cause == UNLOADABLE]
    for failure in unloadable:
        print(f"sheepdog-drmaa: task {failure.index}: {failure.summary}", file=sys.stderr)
    return 1 if unloadable else 0


def cmd_logs(args: argparse.Namespace) -> int:
    """What one attempt of one task printed (the last attempt unless --attempt says which)."""
    sweep = _open(args)
    attempts = sweep.attempts(args.task)
    if not attempts:
        raise KeyError(f"task {args.task} of sweep {args.name} has not been attempted (it has "
                       f"{len(sweep)} tasks, numbered from 0)")
    chosen = [a for a in attempts if args.attempt is None or a.number == args.attempt]
    if not chosen:
        raise KeyError(f"task {args.task} has no attempt {args.attempt}; its attempts are "
                       + ", ".join(str(a.number) for a in attempts))
    attempt = chosen[-1]
    data = {"task": attempt.task, "attempt": attempt.number, "worker": attempt.worker, "host": attempt.host,
            "cause": attempt.cause, "stdout": attempt.stdout, "stderr": attempt.stderr}
    where = f"task {attempt.task} attempt {attempt.number} (worker {attempt.worker} on {attempt.host or '?'})"
    if attempt.cause not in (None, "result", "exception"):
        note = (f"{where} ended as {attempt.cause} before it could report; what it printed is in its "
                "worker's log files, in the sweep's log directory (by default .sheepdog/logs/<sweep id>/)")
        text = note
    else:
        text = "\n".join(f"--- {name} of {where}:\n{value.rstrip() or '(nothing)'}"
                         for name, value in (("stdout", attempt.stdout), ("stderr", attempt.stderr)))
    _emit(args, data, text)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop the sweep's driver (on this host, checked to be that very process), then terminate any job it left."""
    store, record = _open_for_writing(args)
    ended = control.cancel(store, record)
    _emit(args, {"name": record.name, "id": record.id, "terminated_workers": ended},
          f"cancelled {record.name or record.id}; terminated {len(ended)} leftover jobs")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Drive on, detached, a sweep nobody drives, from the store alone."""
    store, record = _open_for_writing(args)
    label = record.name or record.id
    started = control.resume(store, record)
    if started is None:
        _emit(args, {"name": record.name, "id": record.id, "resumed": False},
              f"sweep {label} finished: every task is done; nothing to resume")
        return 0
    _emit(args, {"name": record.name, "id": record.id, "resumed": True, "driver_pid": started.pid,
                 "log": started.log_path},
          f"resumed sweep {label}: driven by process {started.pid}, which logs to {started.log_path}\n"
          f"  `sheepdog-drmaa attach {label}` to watch it, `sheepdog-drmaa wait {label}` to wait for it")
    return 0


def _open_for_writing(args: argparse.Namespace) -> tuple[Store, SweepRecord]:
    check_readable(args.store)
    store = Store(args.store)
    record = store.sweep_named(args.name) or store.sweep(args.name)
    if record is None:
        raise KeyError(f"no sweep named {args.name!r} in {args.store}")
    return store, record


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the read-only dashboard until Ctrl-C; say its URL and how to reach it from a laptop."""
    check_readable(args.store)
    from .dashboard import app
    server, url = app.serve(args.store, args.bind, args.port, args.name)
    app.announce(args.store, url)  # before the URL is said: whoever reads it finds the sweep's link too
    try:
        print(url, flush=True)
        if not app.needs_token(args.bind):
            port = server.server_port
            print(f"from your laptop: ssh -N -L {port}:{args.bind}:{port} {os.environ.get('USER', 'you')}@"
                  f"{socket.getfqdn()}  then open the URL above", file=sys.stderr, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.withdraw(args.store, url)
        server.server_close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The sweep's page as one self-contained HTML file: no script, style or chart from the network."""
    check_readable(args.store)
    from .dashboard import data, pages
    store = Store(args.store, readonly=True)
    record = data.find(store, args.name)
    if record is None:
        raise KeyError(f"no sweep named {args.name!r} in {args.store}")
    text = pages.sweep_page(data.sweep_view(store, record), lambda path: "#", None)
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"report of sweep {record.name or record.id} written to {args.output} ({len(text.encode()) // 1024} KiB)",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=os.environ.get(ENV_PREFIX + "STORE") or DEFAULT_STORE,
                        help="the sweep store (default: $SHEEPDOG_STORE or %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(prog="sheepdog-drmaa", description="Inspect and control stored sweeps.",
                                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="sweeps with counts and age").set_defaults(run=cmd_list)
    for name, run, text in (("status", cmd_status, "counts per state, running jobs, retries, failures by cause"),
                            ("failures", cmd_failures, "each failed task: index, args, cause, attempts, traceback"),
                            ("results", cmd_results, "results as JSON lines (or --pickle FILE)"),
                            ("cancel", cmd_cancel, "stop a sweep and terminate its jobs"),
                            ("resume", cmd_resume, "drive on, detached, a sweep whose driver is gone (or that was "
                                                   "cancelled or interrupted); finished tasks are kept"),
                            ("wait", cmd_wait, "block until the sweep ends: exit 0 all done, 1 some failed, "
                                               "2 cancelled or nobody drives it"),
                            ("attach", cmd_attach, "a live progress bar until the sweep ends; Ctrl-C leaves it "
                                                   "running")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("name", help="the sweep's name (or id)")
        command.set_defaults(run=run)
        if name == "results":
            command.add_argument("--pickle", metavar="FILE", help="write {index: result} as one pickle to FILE")
    dashboard = commands.add_parser("dashboard", parents=[common],
                                    help="a live, read-only web page of the store's sweeps (pip install "
                                         "sheepdog_drmaa[dashboard])")
    dashboard.add_argument("name", nargs="?", help="open this sweep's page first")
    dashboard.add_argument("--port", type=int, default=8787, help="port to listen on (default %(default)s; 0: any)")
    dashboard.add_argument("--bind", default="127.0.0.1",
                           help="address to listen on (default %(default)s; any other asks for a token)")
    dashboard.set_defaults(run=cmd_dashboard)
    report = commands.add_parser("report", parents=[common],
                                 help="the sweep's page as one self-contained HTML file, to share or archive")
    report.add_argument("name", help="the sweep's name (or id)")
    report.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    report.set_defaults(run=cmd_report)
    logs = commands.add_parser("logs", parents=[common], help="what a task printed: stdout and stderr of an attempt")
    logs.add_argument("name", help="the sweep's name (or id)")
    logs.add_argument("task", type=int, help="the task's index")
    logs.add_argument("--attempt", type=int, metavar="K", help="which attempt (default: the last)")
    logs.set_defaults(run=cmd_logs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (KeyError, SheepdogError) as error:
        print(f"sheepdog-drmaa: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
