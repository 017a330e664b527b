"""The joblib backend "sheepdog": real ``joblib.Parallel`` calls on every backend. Results in order with
auto-batching, as a generator, the user's own exception raised and the other calls cancelled, options
reaching each call's sweep; n_jobs; and joblib loaded only by sheepdog_drmaa.joblib."""
from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time
import types
from typing import Any

import joblib  # type: ignore[import-untyped]
import pytest
from helpers import BackendName

import sheepdog_drmaa.joblib
from sheepdog_drmaa.errors import ConfigurationError
from sheepdog_drmaa.executor import RemoteTraceback
from sheepdog_drmaa.joblib import SheepdogBackend
from sheepdog_drmaa.store import Store

REPO = pathlib.Path(__file__).resolve().parent.parent


def square(x: int) -> int:
    return x * x


class OwnError(Exception):
    """An exception class of the user's own."""


def held(directory: str, x: int) -> int:
    """Raise OwnError for 0; others note they started, then run until the file ``release`` appears
    (which no test makes: only cancelling ends them early), at most 90 s."""
    if x == 0:
        raise OwnError("point 0 is bad")
    pathlib.Path(directory, f"{x}.started").touch()
    deadline = time.monotonic() + 90
    while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return x


def first_then_held(directory: str, x: int) -> int:
    """0 at once; the others as ``held``."""
    return 0 if x == 0 else held(directory, x)


def on(backend: BackendName, store: str, **options: Any) -> joblib.parallel_config:
    """The sheepdog backend as joblib's, on the test's backend and store."""
    return joblib.parallel_config(backend="sheepdog", scheduler=str(backend), store=store, progress=False, **options)


def done_and_state(store: str) -> tuple[list[int], str]:
    """The done tasks and the state of the store's only sweep, once checked it has no live worker."""
    database = Store(store, readonly=True)
    [sweep] = database.sweeps()
    assert not database.live_workers(sweep.id)
    return database.tasks_in_state(sweep.id, "done"), sweep.state


def test_results_come_in_order_with_calls_batched_automatically(backend: BackendName, store: str) -> None:
    with on(backend, store, n_jobs=4):
        results = joblib.Parallel()(joblib.delayed(square)(x) for x in range(50))
    assert results == [x * x for x in range(50)]
    database = Store(store, readonly=True)
    [sweep] = database.sweeps()
    assert sweep.state == "finished" and not database.live_workers(sweep.id)  # shut down when the call ended
    assert sweep.n_tasks < 50  # auto-batching put several calls in one task


def test_return_as_generator_yields_results_as_they_come(backend: BackendName, store: str) -> None:
    with on(backend, store, n_jobs=3):
        ordered = joblib.Parallel(return_as="generator")(joblib.delayed(square)(x) for x in range(20))
        assert isinstance(ordered, types.GeneratorType)
        assert list(ordered) == [x * x for x in range(20)]
        unordered = joblib.Parallel(return_as="generator_unordered")(joblib.delayed(square)(x) for x in range(20))
        assert sorted(unordered) == [x * x for x in range(20)]
    assert [sweep.state for sweep in Store(store, readonly=True).sweeps()] == ["finished", "finished"]


def test_a_task_raising_gives_the_users_own_exception_and_cancels_the_other_calls(
        backend: BackendName, store: str, tmp_path: pathlib.Path) -> None:
    with on(backend, store, n_jobs=3), pytest.raises(OwnError, match="point 0 is bad") as raised:
        joblib.Parallel()(joblib.delayed(held)(str(tmp_path), x) for x in range(6))
    assert isinstance(raised.value.__cause__, RemoteTraceback) and "held" in str(raised.value.__cause__)
    done, state = done_and_state(store)
    assert state == "cancelled" and done == []  # the held calls were stopped, not waited for


def test_a_generator_closed_early_cancels_the_calls_left(backend: BackendName, store: str,
                                                          tmp_path: pathlib.Path) -> None:
    with on(backend, store, n_jobs=3):
        results = joblib.Parallel(return_as="generator")(
            joblib.delayed(first_then_held)(str(tmp_path), x) for x in range(6))
        assert next(results) == 0
        with pytest.warns(UserWarning, match="cancelled"):
            results.close()
    done, state = done_and_state(store)
    assert state == "cancelled" and done == [0]


def test_options_reach_each_calls_executor_and_a_parallel_block_keeps_one(backend: BackendName, store: str) -> None:
    expected = [x * x for x in range(6)]
    with on(backend, store, n_jobs=2, memory="1G", retries=1):
        assert joblib.Parallel()(joblib.delayed(square)(x) for x in range(6)) == expected
        assert joblib.Parallel(memory="2G")(joblib.delayed(square)(x) for x in range(6)) == expected
        with joblib.Parallel() as parallel:
            assert parallel(joblib.delayed(square)(x) for x in range(6)) == expected
            assert parallel(joblib.delayed(square)(x) for x in range(6)) == expected
    sweeps = Store(store, readonly=True).sweeps()
    launched = [sweep.launch.options if sweep.launch else {} for sweep in sweeps]
    assert [options.get("memory") for options in launched] == [1 << 30, 2 << 30, 1 << 30]
    assert [options.get("retries") for options in launched] == [1, 1, 1]
    assert [options.get("workers") for options in launched] == [2, 2, 2]
    assert [sweep.state for sweep in sweeps] == ["finished"] * 3


def test_n_jobs_counts_back_from_max_workers_and_one_job_runs_here(store: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHEEPDOG_MAX_WORKERS", "7")
    with joblib.parallel_config(backend="sheepdog", scheduler="local", store=store):
        assert joblib.effective_n_jobs(-1) == 7 and joblib.effective_n_jobs(-2) == 6
        assert joblib.effective_n_jobs(5) == 5 and joblib.effective_n_jobs(-100) == 1
        assert joblib.Parallel(n_jobs=1)(joblib.delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3
    assert not os.path.exists(store)  # no sweep: n_jobs=1 ran in this process, as joblib does


def test_bad_options_are_refused_when_the_backend_is_chosen(store: str) -> None:
    with pytest.raises(TypeError, match="unknown option.*memroy"):
        joblib.parallel_config(backend="sheepdog", memroy="4G")
    with pytest.raises(TypeError, match="n_jobs= rather than workers="):
        joblib.parallel_config(backend="sheepdog", workers=4)
    with pytest.raises(TypeError, match="scheduler= rather than backend="):
        SheepdogBackend(backend="local")
    with pytest.raises(ConfigurationError, match="memory='lots'"):
        joblib.parallel_config(backend="sheepdog", store=store, memory="lots")
    with joblib.parallel_config(backend="sheepdog", scheduler="local", store=store, n_jobs=2):
        with pytest.raises(TypeError, match="unknown option.*walltme"):
            joblib.Parallel(walltme=60)(joblib.delayed(square)(x) for x in range(2))
    assert not os.path.exists(store)


class StubParallel:
    verbose = 0


def test_batches_are_sized_by_their_time_on_the_worker_not_by_the_wait_for_a_job() -> None:
    backend = SheepdogBackend(nesting_level=0)
    backend.parallel = StubParallel()
    computed: concurrent.futures.Future[Any] = concurrent.futures.Future()
    computed.set_result((0.001, [1]))  # a batch of one call that computed for a millisecond
    assert backend.retrieve_result_callback(computed) == [1]
    backend.batch_completed(1, 30.0)  # joblib's measure: half a minute, waiting for a job to start
    assert backend.compute_batch_size() == 2


def modules_after(statement: str) -> set[str]:
    """The modules loaded in a fresh interpreter once ``statement`` ran (this tree's package first on its path)."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    ran = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return set(json.loads(ran.stdout))


def test_only_sheepdog_drmaa_joblib_imports_joblib_and_not_the_executors_side() -> None:
    package = modules_after("import sheepdog_drmaa, sheepdog_drmaa.executor; sheepdog_drmaa.map")
    assert "sheepdog_drmaa.api" in package and "sheepdog_drmaa.executor" in package
    assert not {name for name in package if name.split(".")[0] == "joblib"}
    # A worker imports sheepdog_drmaa.joblib to run a batch: joblib, not the server, store or scheduler.
    backend = modules_after("import sheepdog_drmaa.joblib")
    assert "joblib" in backend
    assert not backend & {"sheepdog_drmaa.executor", "sheepdog_drmaa.store", "werkzeug", "drmaa", "sqlite3"}
    assert sheepdog_drmaa.joblib.NAME in joblib.parallel.BACKENDS
