"""The joblib parallel backend "sheepdog": ``joblib.Parallel`` runs its calls on the cluster.

Importing this module registers it (joblib is an optional extra: nothing else here imports it)::

    import joblib
    import sheepdog_drmaa.joblib

    with joblib.parallel_config(backend="sheepdog", n_jobs=32, memory="4G", walltime="1:00:00"):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

The keywords beside joblib's own are the options of :func:`sheepdog_drmaa.map` (``memory``,
``cores``, ``walltime``, ``queue``, ``retries``, ``timeout``, ``store``, ``name`` ...), given to
``parallel_config`` for its block or to ``Parallel(backend="sheepdog", ...)`` for that call alone.
joblib keeps ``backend=`` for its own backend's name, so the option ``backend`` (which scheduler:
"auto", "local", "drmaa", or a Backend object) is given as ``scheduler=``. ``n_jobs`` is the most
workers at once (the option ``workers``, so ``workers`` and ``max_workers`` are not taken): -1, the
default, is as many as ``max_workers`` allows (``SHEEPDOG_MAX_WORKERS``, else 1000), -2 one fewer;
``n_jobs=1`` runs the calls in this process, as joblib does for every backend.

Each ``Parallel`` call runs as one :class:`~sheepdog_drmaa.executor.Executor` (one sweep in the
store), shut down when the call ends; ``with Parallel(...) as parallel:`` keeps one for every call
made in its block. Not one per ``parallel_config`` block: joblib tells a backend when a call ends,
never when a block does, so an Executor kept for the block would outlive it, workers and all.

Each batch of calls joblib makes is one task. Batches are sized by joblib's auto-batching from how
long each computed on its worker: the time from dispatch to result, which joblib measures, includes
the wait for a job to start (seconds to minutes on a cluster) and would keep batches of one call.
A task that raises gives joblib the user's own exception (its remote traceback as its cause); a
task the cluster broke gives :class:`~sheepdog_drmaa.errors.TaskFailed`. When joblib gives up on a
call (a task raised, the generator of ``return_as="generator"`` was closed early, Ctrl-C), the
sweep is cancelled: calls not started are withdrawn, the jobs of those running removed.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import joblib  # type: ignore[import-untyped]
from joblib.parallel import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from .options import Options, resolve

if TYPE_CHECKING:  # imported when a call starts: a worker imports this module to run _timed, not the executor
    from .executor import Executor

log = logging.getLogger(__name__)

NAME = "sheepdog"
# The options n_jobs stands for, and joblib's own name for the option backend (given as scheduler=).
_NOT_TAKEN = {"workers": "n_jobs", "max_workers": "n_jobs", "backend": "scheduler"}
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options)) - set(_NOT_TAKEN) | {"scheduler"}
# What joblib.Parallel passes to every backend's configure, beside the keywords given to it.
_JOBLIB_KEYWORDS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose", "context"})


def _timed(batch: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    """Run one of joblib's batches (on a worker): the seconds it computed, and its results."""
    started = time.perf_counter()
    results = batch()
    return time.perf_counter() - started, results


def _options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The library's options from the backend's keywords (``scheduler`` renamed ``backend``); a
    TypeError names a keyword that is no option, or one that n_jobs or scheduler stands for."""
    for name, instead in _NOT_TAKEN.items():
        if name in given:
            raise TypeError(f"the joblib backend {NAME!r} takes {instead}= rather than {name}=")
    unknown = sorted(set(given) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for the joblib backend {NAME!r}; known options "
                        f"are: {', '.join(sorted(_OPTION_NAMES))}")
    options = dict(given)
    if "scheduler" in options:
        options["backend"] = options.pop("scheduler")
    return options


class SheepdogBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's calls as tasks of an Executor's sweep, one Executor per ``Parallel`` call."""

    # A batch is one stored task and a lease: tens of milliseconds. Batches computing half a second
    # hide that; past five seconds, a batch's calls are better spread over more workers.
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 5.0
    default_n_jobs = -1  # as many workers as the sweep may have
    supports_retrieve_callback = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.options = _options(options)
        self._most = resolve(self.options).max_workers  # checks every value now, not at the first call
        self._executor: Executor | None = None
        self._made: tuple[int, dict[str, Any]] | None = None  # the current executor's workers and options
        self._aborted: list[Executor] = []  # executors cancelled by abort_everything, shut down by terminate

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers at once: n_jobs; a negative one counts back from ``max_workers`` (-1: all of them)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            return max(self._most + 1 + (n_jobs or self.default_n_jobs), 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Open this call's Executor (the options given to ``Parallel`` over the backend's); with
        one job, joblib's sequential backend instead, which runs the calls in this process."""
        ours = {name: value for name, value in backend_kwargs.items() if name not in _JOBLIB_KEYWORDS}
        options = {**self.options, **_options(ours)}
        workers = self.effective_n_jobs(n_jobs)
        if workers == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        if self._executor is not None:  # configured again without terminate: that Executor is done with
            self._executor.shutdown()
        self._made = (workers, options)
        self._executor = _open_executor(workers, options)
        return workers

    def submit(self, func: Callable[[], list[Any]],
               callback: Callable[[concurrent.futures.Future[Any]], None] | None = None
               ) -> concurrent.futures.Future[Any]:
        """Run one batch as a task; ``callback`` (joblib's) gets its future when it ends."""
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"the joblib backend {NAME!r} is not configured, or was terminated")
        future = executor.submit(_timed, func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: concurrent.futures.Future[Any]) -> list[Any]:
        """The batch's results (or its exception, raised), its computing time fed to auto-batching."""
        seconds, results = out.result()
        AutoBatchingMixin.batch_completed(self, len(results), seconds)
        return results  # type: ignore[no-any-return]

    def batch_completed(self, batch_size: int, duration: float) -> None:
        """Ignored: joblib's duration includes the wait for a job; retrieve_result_callback gives
        auto-batching the batch's computing time instead."""

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the sweep: calls not started withdrawn, running ones' jobs removed. With
        ``ensure_ready`` (a ``with Parallel()`` block goes on), a new Executor for the next call."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        log.info("joblib aborted its call: cancelling sweep %s", executor.sweep_id)
        executor.stop("joblib aborted the Parallel call (a task raised, or its caller stopped)")
        self._aborted.append(executor)
        if ensure_ready and self._made is not None:
            self._executor = _open_executor(*self._made)

    def terminate(self) -> None:
        """Shut the call's Executor down (and any aborted): returns once their workers are gone."""
        executors = [*self._aborted, *([self._executor] if self._executor is not None else [])]
        self._executor, self._aborted = None, []
        for executor in executors:
            executor.shutdown(wait=True)
        self.reset_batch_stats()


def _open_executor(workers: int, options: Mapping[str, Any]) -> Executor:
    """An Executor of ``workers`` workers at most, imported here: a worker imports this module
    (for _timed) and needs none of the executor's side (its server, store, scheduler bindings)."""
    from .executor import Executor
    executor = Executor(max_workers=workers, **options)
    log.debug("joblib backend %r: sweep %s, at most %d workers", NAME, executor.sweep_id, workers)
    return executor


joblib.register_parallel_backend(NAME, SheepdogBackend)
