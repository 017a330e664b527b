"""``map`` and ``map_async``: check the input, store the sweep, start it, hand back results."""
from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import hashlib
import inspect
import logging
import os
import pickle
import reprlib
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import cloudpickle

from . import address, claims, protocol
from .backends import Backend, WorkerSpec, answers, open_backend
from .errors import ConfigurationError, SweepLocked, SweepMismatch
from .handle import Sweep
from .model import Claim, NewSweep, SweepPhase, SweepRecord, TaskState
from .options import Options, resolve
from .runner import Run
from .store import ClaimLost, Store, private_directory

log = logging.getLogger(__name__)

OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options)) | {"namespace"}
# Forwarded to the workers from the submit host's environment (beside PYTHONPATH, every LC_*
# variable, and env=, which wins): what finds the interpreter, its libraries and its packages, and
# the user's locale. Not TMPDIR: schedulers give each job its own (Grid Engine's is removed with
# the job), and the submit host's may not exist on a node.
FORWARDED_VARIABLES = ("PATH", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONNOUSERSITE", "VIRTUAL_ENV",
                       "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE")
# Set to cores= in the job unless env= sets them, so that numerical libraries use the slots asked for.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
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
    sweep = _start(f, args, options)
    if isinstance(sweep, list):
        return sweep
    try:
        if sweep.run is not None:
            with _termination_cancels(sweep.run):
                sweep.run.drive()
        return sweep.results()
    finally:
        sweep.store.close()


@contextlib.contextmanager
def _termination_cancels(run: Run) -> Iterator[None]:
    """While ``map`` runs in the main thread, SIGTERM and SIGHUP (a closed ssh session, a kill)
    end the sweep as Ctrl-C does, so that its jobs are terminated instead of left behind. The
    handler only asks: the driving loop stops at its next turn, not wherever the signal fell
    (an exception raised there could leave a lock taken or a scheduler call half done)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        run.request_cancel(f"the client received {signal.Signals(signum).name}; every job of the sweep was "
                           "terminated (a named sweep can be resumed)")

    previous = {signum: signal.signal(signum, cancel) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def map_async(f: Callable[..., Any], args: Iterable[Any], **options: Any) -> Sweep:
    """Like :func:`map`, but return a :class:`Sweep` handle at once; the sweep runs in a thread."""
    sweep = _start(f, args, options)
    if isinstance(sweep, list):
        raise ConfigurationError("args is empty: there is nothing to run")
    if sweep.run is not None:
        sweep.run.start_in_background()
    return sweep


def _start(f: Callable[..., Any], args: Iterable[Any], given: dict[str, Any]) -> list[Any] | Sweep:
    """Check everything, store the sweep (or find the named one), claim it, and prepare its run.

    Returns [] for empty ``args``, and a Sweep without a run for a named sweep already finished.
    """
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
    options = resolve({k: v for k, v in given.items() if k != "namespace"})
    function = _pickle((f, namespace), "f")
    blobs = [_pickle_argument(item, index) for index, item in enumerate(items)]
    if not blobs:
        return []
    # What the scheduler says of itself is remembered beside the store, for the sweeps that follow.
    directory = os.path.dirname(os.path.abspath(options.store))
    with contextlib.suppress(OSError):  # else nothing is remembered; the store says what is wrong when opened
        private_directory(directory)
    with answers.remembered_in(os.path.join(directory, answers.FILE_NAME)):
        backend = (open_backend(options.backend, local_slots=options.workers, outage_wait=options.outage_wait)
                   if isinstance(options.backend, str) else options.backend)
        try:
            host, bind = _check(options, backend)
            store = Store(options.store)
        except BaseException:
            backend.close()
            raise
    me = claims.for_this_process()
    with contextlib.ExitStack() as undo:  # on any failure below, in reverse: all that was taken is given back
        undo.callback(store.close)
        undo.callback(claims.let_go, me)
        undo.callback(backend.close)
        record, done = _prepare_record(store, options, function, blobs, me)
        undo.callback(_give_back, store, record, me)
        del blobs  # stored: the client keeps no second copy of every argument while the sweep runs
        if len(done) == record.n_tasks:  # nothing left to run: the stored results are the answer
            undo.pop_all()
            backend.close()
            store.release_claim(record.id, me.token)
            claims.let_go(me)
            return Sweep(store, record, errors=options.errors)
        claims.end_leftover_workers(store, record.id, backend)
        run = _make_run(store, record, options, function, backend, host, bind, done, me, _source_file(f))
        undo.pop_all()
    store.set_sweep_state(record.id, SweepPhase.RUNNING)
    return Sweep(store, record, run, errors=options.errors)


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


def _check(options: Options, backend: Backend) -> tuple[str, str]:
    """Check the request against the scheduler and find the address workers will reach, both at once
    (each mostly waits: on the scheduler's commands, on name lookups; neither calls the DRMAA library).
    Returns (host, bind); a refused request is raised first, as when the two ran one after the other."""
    spec = _worker_spec(options, log_dir="")
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sheepdog-check")
    checked = pool.submit(contextvars.copy_context().run, backend.check_request, spec)
    try:
        found = _check_address(options, backend)
    except Exception:
        checked.result()  # a refused request first, as when the two ran one after the other
        raise
    except BaseException:  # Ctrl-C: not held up by the scheduler's commands
        pool.shutdown(wait=False)
        raise
    checked.result()
    pool.shutdown()
    return found


def _check_address(options: Options, backend: Backend) -> tuple[str, str]:
    """The name workers use to reach this host (see address.py for the default), and the address to
    listen on; both must work."""
    if not options.host:
        host = address.default_host(backend.execution_hosts)  # [] (local workers): this machine's name
    else:
        host = options.host
        own = address.addresses_of(host)
        if own and all(address.is_loopback(a) for a in own) and backend.execution_hosts() != []:
            address.warn_if_loopback(host)  # not when workers run on this machine only: loopback reaches it
    bind = options.bind or host
    for name, value in (("host", host), ("bind", bind)):
        try:
            socket.getaddrinfo(value, None)
        except socket.gaierror as error:
            raise ConfigurationError(f"{name}={value!r} does not resolve ({error.strerror}); pass host= a name or "
                                     "address of this submit host that the execution nodes can reach") from None
    try:
        family = socket.getaddrinfo(bind, None)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((bind, options.port))
    except OSError as error:
        raise ConfigurationError(f"cannot listen on {bind}:{options.port} ({error.strerror}); pass bind= (or host=) "
                                 "an address of this machine, and port=0 for any free port") from None
    return host, bind


def _prepare_record(store: Store, options: Options, function: bytes, blobs: list[bytes],
                    me: Claim) -> tuple[SweepRecord, list[int]]:
    """The stored sweep to run, claimed by ``me``: a new one, or the named one to resume (with its done tasks).

    Whatever two clients do at once, one claim statement succeeds and the other client gets
    SweepLocked naming the winner.
    """
    function_digest = hashlib.sha256(function).hexdigest()
    args_digest = _digest(blobs)
    backend_name = options.backend if isinstance(options.backend, str) else "auto"  # a caller's object: not stored
    new = NewSweep(id=uuid.uuid4().hex[:12], name=options.name, function=function, function_digest=function_digest,
                   args_digest=args_digest, n_tasks=len(blobs),
                   options={"backend": backend_name, "python": options.python, "job_name": options.job_name})
    existing = store.sweep_named(options.name) if options.name else None
    try:
        if existing is None:
            store.create_sweep(new, blobs, me)
        elif claims.is_live(existing.owner):
            raise ClaimLost()
        elif options.resume and existing.state != SweepPhase.CREATING:
            _refuse_mismatch(store, existing, options, function_digest, args_digest, len(blobs))
            store.take_claim(existing, me)
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


def _make_run(store: Store, record: SweepRecord, options: Options, function: bytes, backend: Backend,
              host: str, bind: str, done: list[int], claim: Claim, source_file: str | None) -> Run:
    """The live run: the key file, the log directory (both owner-only) and the server, ready to drive."""
    base = os.path.dirname(os.path.abspath(options.store))
    key = protocol.new_key()
    key_path = os.path.join(private_directory(os.path.join(base, "keys")), f"{record.id}-{os.getpid()}.key")
    protocol.write_key_file(key_path, key)
    log_dir = private_directory(os.path.abspath(options.log_dir or os.path.join(base, "logs", record.id)))
    spec = _worker_spec(options, log_dir)
    try:
        return Run(store=store, sweep_id=record.id, label=record.name or record.id, n_tasks=record.n_tasks,
                   function=function, backend=backend, spec_without_url=spec, key=key, key_path=key_path,
                   host=host, bind=bind, port=options.port, options=options, done=done, claim=claim,
                   source_file=source_file)
    except BaseException:
        os.unlink(key_path)
        raise


def _worker_spec(options: Options, log_dir: str) -> WorkerSpec:
    """How this sweep's workers are to be started, as asked of the scheduler."""
    return WorkerSpec(python=options.python, environment=_worker_environment(options), working_directory=os.getcwd(),
                      log_dir=log_dir, job_name=options.job_name, queue=options.queue, native_spec=options.native_spec,
                      walltime=options.walltime, memory=options.memory, cores=options.cores, gpus=options.gpus,
                      project=options.project, parallel_env=options.parallel_env,
                      memory_resource=options.memory_resource, setup=tuple(options.setup))


def _worker_environment(options: Options) -> dict[str, str]:
    """The job environment: this host's import path and basic variables, thread counts for cores=,
    then the user's env=."""
    environment = {name: value for name, value in os.environ.items()
                   if name in FORWARDED_VARIABLES or name.startswith("LC_")}
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.exists(p)))
    if options.cores is not None:
        environment.update(dict.fromkeys(THREAD_VARIABLES, str(options.cores)))
    environment.update(options.env)
    return environment
