"""Starting a stored sweep's run in this process: the scheduler opened and asked, the address its
workers reach, the key, the log directory and the task server.

Shared by a caller that drives its own sweep (``map``) and by the process that drives a detached
or resumed one, so that both start a run the same way.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from . import address, protocol
from .backends import Backend, WorkerSpec, answers, open_backend
from .errors import ConfigurationError
from .model import Claim, Launch, SweepRecord
from .options import Options, stored_form
from .runner import Run
from .store import Store, private_directory

# Forwarded to the workers from the submit host's environment (beside PYTHONPATH, every LC_*
# variable, and env=, which wins): what finds the interpreter, its libraries and its packages, and
# the user's locale. Not TMPDIR: schedulers give each job its own (Grid Engine's is removed with
# the job), and the submit host's may not exist on a node.
FORWARDED_VARIABLES = ("PATH", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONNOUSERSITE", "VIRTUAL_ENV",
                       "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE")
# What a driver process needs of the caller's environment to reach the same scheduler, kept with the
# sweep so that one resumed from another shell does not fall back to another (or to none).
SCHEDULER_VARIABLES = ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT", "SGE_CLUSTER_NAME",
                       "DRMAA_LIBRARY_PATH", "SHEEPDOG_SLURM_DRMAA_LIBRARY", "SLURM_CONF", "SLURM_DRMAA_CONF",
                       "GLIBC_TUNABLES", "PATH", "LD_LIBRARY_PATH")
# Set to cores= in the job unless env= sets them, so that numerical libraries use the slots asked for.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def launch_for(options: Options, source_file: str | None) -> Launch:
    """How this caller would start the sweep's workers, to be stored for a driver in another process:
    its environment and working directory now, and the options with every path made absolute.
    A sweep run with a Backend object keeps no options (it can only be driven here)."""
    kept = (stored_form(dataclasses.replace(options, store=os.path.abspath(options.store), detach=False,
                                            log_dir=options.log_dir and os.path.abspath(options.log_dir)))
            if isinstance(options.backend, str) else {})
    return Launch(options=kept, environment=worker_environment(options), working_directory=os.getcwd(),
                  source_file=source_file,
                  scheduler_environment={name: value for name, value in os.environ.items()
                                         if name in SCHEDULER_VARIABLES})


def open_checked_backend(options: Options) -> tuple[Backend, str, str]:
    """The backend, opened, with the request checked against the scheduler and the address workers
    will reach: (backend, host, bind). What the scheduler says of itself is remembered beside the
    store, for the sweeps that follow."""
    directory = os.path.dirname(os.path.abspath(options.store))
    with contextlib.suppress(OSError):  # else nothing is remembered; the store says what is wrong when opened
        private_directory(directory)
    with answers.remembered_in(os.path.join(directory, answers.FILE_NAME)):
        backend = (open_backend(options.backend, local_slots=options.workers, outage_wait=options.outage_wait)
                   if isinstance(options.backend, str) else options.backend)
        try:
            host, bind = _check(options, backend)
        except BaseException:
            backend.close()
            raise
    return backend, host, bind


def open_for_run(options: Options) -> tuple[Options, Backend, str, str, Store]:
    """The backend opened and checked (see :func:`open_checked_backend`), the options naming the
    backend as opened ("auto" could mean another one to a process that reads them later), and the
    store; nothing is left open if any of it fails."""
    backend, host, bind = open_checked_backend(options)
    if isinstance(options.backend, str):
        options = dataclasses.replace(options, backend=backend.name)
    try:
        return options, backend, host, bind, Store(options.store)
    except BaseException:
        backend.close()
        raise


def _check(options: Options, backend: Backend) -> tuple[str, str]:
    """Check the request against the scheduler and find the address workers will reach, both at once
    (each mostly waits: on the scheduler's commands, on name lookups; neither calls the DRMAA library).
    Returns (host, bind); a refused request is raised first, as when the two ran one after the other."""
    spec = worker_spec(options, Launch({}, worker_environment(options), os.getcwd(), None), log_dir="")
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sheepdog-check")
    checked = pool.submit(contextvars.copy_context().run, backend.check_request, spec)
    try:
        found = _check_address(options, backend, spec)
    except Exception:
        checked.result()  # a refused request first, as when the two ran one after the other
        raise
    except BaseException:  # Ctrl-C: not held up by the scheduler's commands
        pool.shutdown(wait=False)
        raise
    checked.result()
    pool.shutdown()
    return found


def _check_address(options: Options, backend: Backend, spec: WorkerSpec) -> tuple[str, str]:
    """The name workers use to reach this host (see address.py for the default: the address on the
    route to the hosts of the queue or partition asked for), and the address to listen on; both must work."""
    if not options.host:
        host = address.default_host(lambda: backend.execution_hosts(spec))  # []: local workers, this machine's name
    else:
        host = options.host
        own = address.addresses_of(host)
        if own and all(address.is_loopback(a) for a in own) and backend.execution_hosts(spec) != []:
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


def make_run(store: Store, record: SweepRecord, options: Options, launch: Launch, function: bytes, backend: Backend,
             host: str, bind: str, done: list[int], claim: Claim, accepting: bool = False) -> Run:
    """The live run: the key file, the log directory (both owner-only) and the server, ready to drive.
    ``accepting``: tasks may be added while it runs (an Executor's)."""
    base = os.path.dirname(os.path.abspath(options.store))
    key = protocol.new_key()
    key_path = os.path.join(private_directory(os.path.join(base, "keys")), f"{record.id}-{os.getpid()}.key")
    protocol.write_key_file(key_path, key)
    log_dir = private_directory(options.log_directory(record.id))
    spec = worker_spec(options, launch, log_dir)
    try:
        return Run(store=store, sweep_id=record.id, label=record.name or record.id, n_tasks=record.n_tasks,
                   function=function, backend=backend, spec_without_url=spec, key=key, key_path=key_path,
                   host=host, bind=bind, port=options.port, options=options, done=done, claim=claim,
                   source_file=launch.source_file, accepting=accepting)
    except BaseException:
        os.unlink(key_path)
        raise


def worker_spec(options: Options, launch: Launch, log_dir: str) -> WorkerSpec:
    """How this sweep's workers are to be started, as asked of the scheduler."""
    return WorkerSpec(python=options.python, environment=launch.environment,
                      working_directory=launch.working_directory, log_dir=log_dir, job_name=options.job_name,
                      queue=options.queue, native_spec=options.native_spec, walltime=options.walltime,
                      memory=options.memory, cores=options.cores, gpus=options.gpus, project=options.project,
                      parallel_env=options.parallel_env, memory_resource=options.memory_resource,
                      setup=tuple(options.setup))


def worker_environment(options: Options) -> dict[str, str]:
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


@contextlib.contextmanager
def termination_cancels(run: Run, who: str,
                        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While ``run`` is driven in the main thread, SIGTERM and SIGHUP (a closed ssh session, a kill)
    end the sweep as Ctrl-C does, so that its jobs are terminated instead of left behind. The
    handler only asks: the driving loop stops at its next turn, not wherever the signal fell
    (an exception raised there could leave a lock taken or a scheduler call half done).
    ``who`` names the process in the message (the client, the sweep's driver), which ``signals``
    (SIGTERM and SIGHUP by default) stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        hint = ("; pass detach=True (or set SHEEPDOG_DETACH=1) for a sweep that outlives its terminal"
                if signum == signal.SIGHUP else "")
        run.request_cancel(f"{who} received {signal.Signals(signum).name}; every job of the sweep was terminated "
                           f"(a named sweep can be resumed){hint}")

    previous = {signum: signal.signal(signum, cancel) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
