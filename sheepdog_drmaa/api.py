"""``map`` and ``map_async``: check the input, store the sweep, start it, hand back results."""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import inspect
import logging
import os
import pickle
import re
import reprlib
import secrets
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import cloudpickle

from . import claims, control
from .errors import ConfigurationError, SweepLocked, SweepMismatch
from .handle import Sweep
from .model import Claim, Launch, NewSweep, SweepPhase, SweepRecord, TaskState
from .options import Options, resolve
from .progress import announce
from .starting import launch_for, make_run, open_for_run, termination_cancels
from .store import ClaimLost, Store

log = logging.getLogger(__name__)

OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options)) | {"namespace"}
# Exact types that the C pickler writes itself, before it asks cloudpickle's reducer_override: an
# argument made of these alone (or a tuple of them) pickles to the same bytes with the standard
# pickler, four times faster (so the stored arguments, and the digest a resume compares, are unchanged).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes})


def map(f: Callable[..., Any], args: Iterable[Any], **options: Any) -> list[Any]:
    """Run ``f`` once per element of ``args`` on the cluster; return the results in input order.

    An element that is a tuple is unpacked into arguments (``f(*item)``); anything else, lists
    included, is passed as the single argument (``f(item)``). ``f`` travels with cloudpickle, so
    lambdas, closures and functions defined in ``__main__`` or a notebook work.

    Keyword-only options (each also read from ``SHEEPDOG_<NAME>`` when not given):
    backend ("auto", "drmaa" or "local"), workers, max_workers, tasks_per_worker, host, bind,
    port, python, env, queue, native_spec, job_name, log_dir, progress, errors ("raise" or
    "return"), retries, retry_exceptions, timeout, heartbeat_interval, heartbeat_timeout,
    outage_wait (seconds an unreachable scheduler is waited for), store, output_limit,
    max_result_size, name, resume, and namespace (extra globals for ``f``, as in the original sheepdog).

    Resources per worker, asked of the scheduler in its own terms and checked against it before
    anything is submitted: memory ("4G"; on Grid Engine the memory_resource complex, default
    h_vmem, per slot, so divided by cores), cores (slots: a parallel_env, default "smp", on Grid
    Engine; --cpus-per-task on Slurm; also sets OMP_NUM_THREADS and its kin unless env= does),
    gpus, project (-P; --account), walltime; native_spec comes last and wins. setup: shell lines
    run in the job's /bin/sh before the worker's Python starts.

    Tasks that fail for good make it raise :class:`SweepFailed` once every other task has
    finished; it carries ``.failures`` and the partial ``.results``. With ``errors="return"``
    the failure record stands in the list in place of each failed result instead.
    """
    sweep, resolved = _start(f, args, options)
    if isinstance(sweep, list):
        return sweep
    try:
        if sweep.run is not None:
            with termination_cancels(sweep.run, "the client"):
                sweep.run.drive()
        elif resolved.detach:
            _watch_detached(sweep, resolved)
        return sweep.results()
    finally:
        sweep.store.close()


def _watch_detached(sweep: Sweep, options: Options) -> None:
    """Follow a detached sweep to its end with the progress display; Ctrl-C leaves it running."""
    try:
        sweep.watch(options.progress)
    except KeyboardInterrupt:
        log.warning("left sweep %s; it goes on, detached (`sheepdog-drmaa attach %s` to watch it again)",
                    sweep.name, sweep.name)
        raise


def map_async(f: Callable[..., Any], args: Iterable[Any], **options: Any) -> Sweep:
    """Like :func:`map`, but return a :class:`Sweep` handle at once; the sweep runs in a thread, or,
    with ``detach=True``, in a process of its own that outlives the caller."""
    sweep, _ = _start(f, args, options)
    if isinstance(sweep, list):
        raise ConfigurationError("args is empty: there is nothing to run")
    if sweep.run is not None:
        sweep.run.start_in_background()
    return sweep


def _start(f: Callable[..., Any], args: Iterable[Any], given: dict[str, Any]) -> tuple[list[Any] | Sweep, Options]:
    """Check everything, store the sweep (or find the named one), claim it, and prepare its run, or
    hand it to a driver process of its own (detach=True). Also returns the options as resolved.

    Gives [] for empty ``args``, and a Sweep without a run for a named sweep already finished or
    one detached.
    """
    options, function, items = _checked_call(f, args, given)
    blobs = [_pickle_argument(item, index) for index, item in enumerate(items)]
    if not blobs:
        return [], options
    options, backend, host, bind, store = open_for_run(options)
    me = claims.for_this_process()
    launch = launch_for(options, _source_file(f))
    with contextlib.ExitStack() as undo:  # on any failure below, in reverse: all that was taken is given back
        undo.callback(store.close)
        undo.callback(claims.let_go, me)
        undo.callback(backend.close)
        record, done = _prepare_record(store, options, function, blobs, me, launch)
        undo.callback(_give_back, store, record, me)
        del blobs  # stored: the client keeps no second copy of every argument while the sweep runs
        if len(done) == record.n_tasks:  # nothing left to run: the stored results are the answer
            undo.pop_all()
            backend.close()
            store.release_claim(record.id, me.token)
            claims.let_go(me)
            return Sweep(store, record, errors=options.errors), options
        if options.detach:
            started = control.start_driver(store, record, me)
            undo.pop_all()
            backend.close()
            claims.let_go(me)
            named = given.get("name") is not None  # else a name was made: said unless progress=False
            announce(options.progress if named else options.progress is not False,
                     f"sweep {record.name} runs detached, driven by process {started.pid} (its "
                                       f"log: {started.log_path}); `sheepdog-drmaa attach {record.name}` to watch it")
            log.info("sweep %s handed to process %d", record.name, started.pid)
            return Sweep(store, store.sweep(record.id) or record, errors=options.errors), options
        claims.end_leftover_workers(store, record.id, backend)
        run = make_run(store, record, options, launch, function, backend, host, bind, done, me)
        undo.pop_all()
    if not store.set_sweep_state(record.id, SweepPhase.RUNNING, me.token):  # cancelled in between
        run.request_cancel(f"sweep {record.name or record.id} was cancelled before it started")
    return Sweep(store, record, run, errors=options.errors), options


def _checked_call(f: Callable[..., Any], args: Iterable[Any],
                  given: dict[str, Any]) -> tuple[Options, bytes, Iterator[Any]]:
    """The options resolved, ``f`` pickled and ``args`` iterated, or an error saying what is wrong."""
    unknown = sorted(set(given) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known options are: {', '.join(sorted(OPTION_NAMES))}")
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__} {_safe_repr(f)}")
    namespace = given.get("namespace") or {}
    if not isinstance(namespace, dict):
        raise TypeError(f"namespace must be a dict of extra globals for f, got {type(namespace).__name__}")
    try:
        items = iter(args)
    except TypeError:
        raise TypeError(f"args must be an iterable of argument tuples or single arguments, "
                        f"got {type(args).__name__}") from None
    options = _detachable(resolve({k: v for k, v in given.items() if k != "namespace"}), f)
    function = _pickle((f, namespace), "f")
    return options, function, items


def _detachable(options: Options, f: Callable[..., Any]) -> Options:
    """The options, checked for detach=True: a backend that another process can open, and a name
    (one is made from ``f``'s name and the time when none is given)."""
    if not options.detach:
        return options
    if not isinstance(options.backend, str):
        raise ConfigurationError("detach=True hands the sweep to another process, which cannot be given a Backend "
                                 "object; pass backend= a name ('drmaa' or 'local')")
    if options.name is not None:
        return options
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", getattr(f, "__name__", "") or "sweep").strip("-.") or "sweep"
    return dataclasses.replace(options, name=f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")


def _pickle(value: Any, what: str, index: int | None = None) -> bytes:
    """cloudpickle ``value``; on failure, name it (its repr is made only then: it may be costly)."""
    try:
        pickled: bytes = cloudpickle.dumps(value, protocol=5)
        return pickled
    except Exception as error:
        name = what if index is None else f"{what}[{index}]"
        if isinstance(error, RecursionError) or isinstance(error.__context__, RecursionError):
            raise ConfigurationError(f"{name} = {_safe_repr(value)} is nested too deeply to be serialised with "
                                     f"cloudpickle (deeper than Python's recursion limit, "
                                     f"{sys.getrecursionlimit()}); flatten it") from None
        named = name if index is None else f"{name} = {_safe_repr(value)}"
        raise ConfigurationError(f"{named} cannot be serialised with cloudpickle to reach the workers: "
                                 f"{type(error).__name__}: {error}") from error


def _pickle_argument(item: Any, index: int) -> bytes:
    """One element of ``args``, pickled as cloudpickle would: by the standard pickler when it is plain."""
    kind = type(item)
    if kind in _PLAIN or (kind is tuple and _PLAIN.issuperset(builtins.map(type, item))):
        return pickle.dumps(item, protocol=5)
    return _pickle(item, "args", index)


def _source_file(f: Callable[..., Any]) -> str | None:
    """The file ``f`` was defined in, if it is a real file (not a notebook cell or the prompt)."""
    try:
        filename = inspect.getsourcefile(f)
    except TypeError:  # a builtin, or a callable object without source
        return None
    return filename if filename and os.path.isfile(filename) else None


def _safe_repr(value: Any) -> str:
    """A short repr for messages, that neither recurses without bound nor lets the object's __repr__ fail."""
    try:
        return reprlib.repr(value)
    except Exception as error:
        return f"<{type(value).__name__} whose repr failed: {type(error).__name__}>"


def _digest(blobs: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return digest.hexdigest()


def _prepare_record(store: Store, options: Options, function: bytes, blobs: list[bytes], me: Claim,
                    launch: Launch) -> tuple[SweepRecord, list[int]]:
    """The stored sweep to run, claimed by ``me``: a new one, or the named one to resume (with its done tasks).

    Whatever two clients do at once, one claim statement succeeds and the other client gets
    SweepLocked naming the winner.
    """
    function_digest = hashlib.sha256(function).hexdigest()
    args_digest = _digest(blobs)
    backend_name = options.backend if isinstance(options.backend, str) else "auto"  # a caller's object: not stored
    new = NewSweep(id=uuid.uuid4().hex[:12], name=options.name, function=function, function_digest=function_digest,
                   args_digest=args_digest, n_tasks=len(blobs),
                   options={"backend": backend_name, "python": options.python, "job_name": options.job_name},
                   launch=launch if launch.options else None)
    existing = store.sweep_named(options.name) if options.name else None
    try:
        if existing is None:
            store.create_sweep(new, blobs, me)
        elif claims.is_live(existing.owner):
            raise ClaimLost()
        elif options.resume and existing.state != SweepPhase.CREATING:
            _refuse_mismatch(store, existing, options, function_digest, args_digest, len(blobs))
            store.take_claim(existing, me, launch if launch.options else None)
            done = store.tasks_in_state(existing.id, TaskState.DONE.value)
            log.info("resuming sweep %r: %d of %d tasks already done", options.name, len(done), existing.n_tasks)
            return dataclasses.replace(existing, owner=me), done
        else:
            store.create_sweep(new, blobs, me, replacing=existing)
    except ClaimLost:
        winner = store.sweep_named(options.name) if options.name else None
        holder = winner.owner.describe() if winner is not None and winner.owner else "another client"
        raise SweepLocked(f"sweep {options.name!r} is being run by {holder}; wait for it, or cancel it with "
                          f"`sheepdog-drmaa cancel {options.name}`") from None
    record = store.sweep(new.id)
    assert record is not None
    return record, []


def _give_back(store: Store, record: SweepRecord, me: Claim) -> None:
    """A sweep that could not be started: a new unnamed one is deleted, a named one keeps its tasks, unclaimed."""
    if record.name is None:
        store.delete_sweep(record.id)
    else:
        store.release_claim(record.id, me.token)


def _refuse_mismatch(store: Store, existing: SweepRecord, options: Options, function_digest: str,
                     args_digest: str, n_tasks: int) -> None:
    """Resuming runs exactly the stored sweep: the same function, the same arguments, every task stored."""
    if existing.n_tasks != n_tasks or store.stored_task_count(existing.id) != existing.n_tasks:
        what = f"{existing.n_tasks} tasks (now {n_tasks})"
    elif existing.function_digest != function_digest:
        what = "a different function"
    elif existing.args_digest != args_digest:
        what = "different arguments"
    else:
        return
    raise SweepMismatch(f"sweep {options.name!r} in {options.store} was stored with {what}; pass resume=False to "
                        "start that name afresh (its stored results are discarded), or choose another name=")
