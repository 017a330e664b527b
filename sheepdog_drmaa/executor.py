"""``Executor``: a ``concurrent.futures.Executor`` whose calls run on the cluster as one sweep that
grows as they are submitted.

``submit`` only queues the call and returns its future. A thread of the executor takes what was
queued (calls submitted close together go together), pickles it, adds it to the live sweep (stored
first) and registers the futures; the sweep's driver then submits, as one bulk array job, the
workers the new tasks need, and workers already up lease them at once. Another thread resolves
each future as the store records its task ended: with its result, with the user's own exception
(the remote traceback as its cause), or with :class:`TaskFailed` holding the failure record.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import pickle
import threading
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import calls, claims
from .errors import ConfigurationError, SweepLocked, SweepMismatch, TaskFailed
from .executor_intake import Call, Intake
from .model import Claim, NewSweep, SweepPhase, SweepRecord, TaskState
from .options import Options, resolve
from .records import TaskFailure, failure_from_store
from .runner import Run
from .starting import launch_for, make_run, open_for_run
from .store import Store

log = logging.getLogger(__name__)

EXECUTOR_KIND = "executor"  # in a sweep's stored options: a sweep of calls, which an Executor reopens
_FUNCTION = cloudpickle.dumps((calls.call, {}), protocol=5)
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))


class RemoteTraceback(Exception):
    """The traceback of an exception raised on the cluster, as the cause of the exception itself."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SweepFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A submitted call's future; ``cancel()`` takes back a call that has not started."""

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor
        self.index: int | None = None  # the task's index in the sweep, once added to it

    def cancel(self) -> bool:
        return self._executor._cancel(self) and super().cancel()


class Executor(concurrent.futures.Executor):
    """Run calls on the cluster: ``submit(fn, *args, **kwargs)`` returns a future.

    Takes the options of :func:`sheepdog_drmaa.map` (resources, ``setup``, ``retries``,
    ``timeout``, ``name``, ``store``, ``backend`` ...) and ``max_workers`` (at most that many
    workers at once; the option ``workers``). Workers with nothing to do for ``idle_timeout``
    seconds (default 60) exit; new calls bring new ones. With ``name=``, a call whose function and
    arguments match one that finished in an earlier run of that named Executor returns the stored
    result without running again.
    """

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known options are: "
                            f"{', '.join(sorted(_OPTION_NAMES))}")
        if max_workers is not None:
            options["workers"] = max_workers
        self.options = resolve(options)
        if self.options.detach:
            raise ConfigurationError("an Executor's futures live in this process: detach=True is for map_async")
        self._lock = threading.Lock()  # the registry of futures by task, and the shutdown flag
        self._futures: dict[int, SweepFuture] = {}
        self._shut_down = False
        self.store, self.run, self._remembered = _open_sweep(self.options)
        self.name = self.options.name
        self._intake = Intake(self._add, f"sheepdog-intake-{self.run.sweep_id}")
        self._resolver = threading.Thread(target=self._resolve, name=f"sheepdog-resolve-{self.run.sweep_id}",
                                          daemon=True)
        self._resolver.start()
        self.run.start_in_background()

    @property
    def sweep_id(self) -> str:
        return self.run.sweep_id

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)`` to run on the cluster; its future."""
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.run.finished.is_set():
                raise RuntimeError(f"the executor's sweep {self.run.label} has ended: {self.run.error}")
            future = SweepFuture(self)
            self._intake.put(Call(future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; with ``cancel_futures``, those not started are cancelled. With ``wait``,
        return once every call has ended and every worker is gone."""
        with self._lock:
            self._shut_down = True
        self._intake.close(cancel=cancel_futures)
        if cancel_futures:
            with self._lock:
                waiting = list(self._futures.values())
            for future in waiting:
                future.cancel()
        self.run.stop_accepting()
        if wait:
            self.run.wait()
            self._resolver.join()
            self.store.close()

    def stop(self, reason: str) -> None:
        """Give up on every call: those not started are cancelled, the jobs of those running are
        removed (their futures fail with ``reason``); returns at once (``shutdown`` waits)."""
        self.shutdown(wait=False, cancel_futures=True)
        self.run.request_cancel(reason)

    # -- the intake thread ----------------------------------------------------------------------

    def _add(self, batch: list[Call]) -> None:
        """Calls taken from the queue: those a named Executor ran before are answered from the store;
        the others join the sweep and are registered, unless cancelled meanwhile."""
        functions: dict[int, tuple[Any, bytes]] = {}  # each function pickled once per batch
        pickled = [(call, *_pickled(call, functions)) for call in batch]
        with self._lock:
            fresh = []
            for call, blob, digest in pickled:
                future = call.future
                assert isinstance(future, SweepFuture)
                if future.cancelled():
                    continue
                known = self._remembered.get(digest)
                if known is not None:
                    self._settle_from_store(future, known)
                else:
                    fresh.append((future, blob, digest))
            if not fresh:
                return
            try:
                added = self.run.add_tasks([blob for _, blob, _ in fresh], [digest for _, _, digest in fresh])
            except Exception as error:  # the store refused, or the sweep ended: these calls fail with why
                for future, _, _ in fresh:
                    future.set_exception(error)
                return
            for (future, _, digest), index in zip(fresh, added):
                future.index = index
                self._futures[index] = future
                if self.name:
                    self._remembered.pending[index] = digest

    def _settle_from_store(self, future: SweepFuture, index: int) -> None:
        blob, _ = self.store.result(self.run.sweep_id, index)
        try:
            future.set_result(pickle.loads(blob) if blob is not None else None)
        except Exception as error:
            future.set_exception(error)

    # -- the resolving thread -------------------------------------------------------------------

    def _resolve(self) -> None:
        """Settle each future as its task ends for good; once the sweep ends, fail those left."""
        for batch in self.run.completion_batches():
            with self._lock:
                taken = [(index, self._futures.pop(index, None), self._remembered.pending.pop(index, None))
                         for index in batch]
            settling = [(index, future, digest) for index, future, digest in taken
                        if future is not None and not future.done()]
            if not settling:
                continue
            try:
                outcomes = self.store.outcomes(self.run.sweep_id, [index for index, _, _ in settling])
            except Exception as error:  # the store cannot be read: these futures say so
                for _, future, _ in settling:
                    future.set_exception(error)
                continue
            for index, future, digest in settling:
                try:
                    self._settle(future, index, digest, outcomes[index][0])
                except Exception as error:  # a result that cannot be read here: the future says so
                    future.set_exception(error)
        with self._lock:
            left = list(self._futures.values())
            self._futures.clear()
        ending = self.run.error or RuntimeError(f"the executor's sweep {self.run.label} ended before this call ran")
        for future in left:
            if not future.done():
                future.set_exception(ending)

    def _settle(self, future: SweepFuture, index: int, digest: str | None, blob: bytes | None) -> None:
        """The future of a task ended for good, from its stored result (``blob``: None if it failed)."""
        if blob is not None:
            future.set_result(pickle.loads(blob))
            if digest is not None:
                self._remembered[digest] = index
            return
        failure = failure_from_store(self.store, self.run.sweep_id, index)
        future.set_exception(_exception_of(failure))

    def _cancel(self, future: SweepFuture) -> bool:
        """Whether the call may be cancelled: not yet added, or added and withdrawn before it started."""
        with self._lock:
            if future.index is None:
                return True  # still queued: the intake leaves it out
            if not self.run.withdraw(future.index):
                return False
            self._futures.pop(future.index, None)
            return True


class _Remembered(dict[str, int]):
    """Done calls of a named Executor, by digest; ``pending``: the digests of calls under way."""

    def __init__(self, done: dict[str, int]) -> None:
        super().__init__(done)
        self.pending: dict[int, str] = {}


def _pickled(call: Call, functions: dict[int, tuple[Any, bytes]]) -> tuple[bytes, str]:
    """The call as a task's argument, and its digest; ``functions``: those pickled already, by id
    (each kept beside its pickle, so that its id is not reused meanwhile)."""
    known = functions.get(id(call.fn))
    if known is None:
        known = functions[id(call.fn)] = (call.fn, cloudpickle.dumps(call.fn, protocol=5))
    function = known[1]
    blob = cloudpickle.dumps((function, call.args, call.kwargs), protocol=5)
    return blob, hashlib.sha256(blob).hexdigest()


def _exception_of(failure: TaskFailure) -> BaseException:
    """What the future of a failed call raises: the user's own exception, its remote traceback as
    its cause; or TaskFailed with the failure record when the cluster broke the call."""
    if isinstance(failure.args, tuple) and len(failure.args) == 3:  # the call as stored: shown by its arguments
        _, args, kwargs = failure.args
        failure = dataclasses.replace(failure, args=(*args, *(f"{k}={v!r}" for k, v in kwargs.items())))
    exception = failure.exception
    if failure.cause == "exception" and exception is not None:
        exception.__cause__ = RemoteTraceback(f"\n\"\"\"\n{failure.traceback or ''}\"\"\"")
        return exception
    return TaskFailed(failure.describe(), failure)


def _open_sweep(options: Options) -> tuple[Store, Run, _Remembered]:
    """The executor's live sweep: a new one, or the named one reopened (its done calls remembered,
    anything else of its earlier run left alone)."""
    options, backend, host, bind, store = open_for_run(options)
    me = claims.for_this_process()
    launch = launch_for(options, None)
    with contextlib.ExitStack() as undo:
        undo.callback(store.close)
        undo.callback(claims.let_go, me)
        undo.callback(backend.close)
        record, remembered, settled = _claimed_record(store, options, me, launch)
        undo.callback(store.release_claim, record.id, me.token)
        claims.end_leftover_workers(store, record.id, backend)
        done = store.tasks_in_state(record.id, TaskState.DONE.value)
        run = make_run(store, record, options, launch, _FUNCTION, backend, host, bind, done, me, accepting=True)
        run.leave_alone(settled)
        undo.pop_all()
    store.set_sweep_state(record.id, SweepPhase.RUNNING)
    return store, run, remembered


def _claimed_record(store: Store, options: Options, me: Claim,
                    launch: Any) -> tuple[SweepRecord, _Remembered, list[int]]:
    """The sweep, claimed by ``me``; the done calls to remember, and the earlier tasks not done."""
    existing = store.sweep_named(options.name) if options.name else None
    if existing is None:
        new = NewSweep(id=uuid.uuid4().hex[:12], name=options.name, function=_FUNCTION,
                       function_digest=hashlib.sha256(_FUNCTION).hexdigest(), args_digest="", n_tasks=0,
                       options={"backend": options.backend if isinstance(options.backend, str) else "auto",
                                "python": options.python, "job_name": options.job_name, "kind": EXECUTOR_KIND},
                       launch=launch if launch.options else None)
        store.create_sweep(new, [], me)
        record = store.sweep(new.id)
        assert record is not None
        return record, _Remembered({}), []
    if claims.is_live(existing.owner):
        assert existing.owner is not None
        raise SweepLocked(f"sweep {options.name!r} is run by {existing.owner.describe()}; use another name=, or "
                          f"stop it (`sheepdog-drmaa cancel {options.name}`)")
    if existing.options.get("kind") != EXECUTOR_KIND:
        raise SweepMismatch(f"sweep {options.name!r} in {options.store} was stored by map, not by an Executor; "
                            "choose another name=")
    store.take_claim(existing, me, launch if launch.options else None)
    unsettled = [index for state in (TaskState.PENDING, TaskState.RUNNING)
                 for index in store.tasks_in_state(existing.id, state.value)]
    store.withdraw_tasks(existing.id, unsettled)
    done = set(store.tasks_in_state(existing.id, TaskState.DONE.value))
    settled = [index for index in range(existing.n_tasks) if index not in done]
    record = store.sweep(existing.id)
    assert record is not None
    return record, _Remembered(store.done_by_digest(existing.id)), settled
