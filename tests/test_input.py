"""Bad input gets a clear error before anything is submitted."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from helpers import Cluster

import sheepdog_drmaa
from sheepdog_drmaa import BackendUnavailable, ConfigurationError


@pytest.fixture
def local_map(store: str) -> Callable[..., list[Any]]:
    def run(f: Callable[..., Any], args: Iterable[Any], **options: Any) -> list[Any]:
        options = {"backend": "local", "store": store, "progress": False, **options}
        results: list[Any] = sheepdog_drmaa.map(f, args, **options)
        return results
    return run


def test_args_not_iterable(local_map: Callable[..., list[Any]], store: str) -> None:
    with pytest.raises(TypeError, match="args must be an iterable"):
        local_map(abs, 42)
    assert not os.path.exists(store)


def test_f_not_callable(local_map: Callable[..., list[Any]]) -> None:
    with pytest.raises(TypeError, match="f must be callable"):
        local_map("abs", [1])


def test_unknown_option_is_a_type_error(local_map: Callable[..., list[Any]]) -> None:
    with pytest.raises(TypeError, match="unknown option.*retires"):
        local_map(abs, [1], retires=3)


def test_f_that_cannot_be_pickled_names_the_object(local_map: Callable[..., list[Any]], store: str) -> None:
    lock = threading.Lock()
    with pytest.raises(ConfigurationError, match="f cannot be serialised.*lock"):
        local_map(lambda x: lock, [1])
    assert not os.path.exists(store)


def test_an_argument_that_cannot_be_pickled_is_named_with_its_index(local_map: Callable[..., list[Any]],
                                                                    store: str) -> None:
    with pytest.raises(ConfigurationError, match=r"args\[1\].*lock"):
        local_map(abs, [1, threading.Lock()])
    assert not os.path.exists(store)


def test_unreachable_host(local_map: Callable[..., list[Any]]) -> None:
    with pytest.raises(ConfigurationError, match="does not resolve"):
        local_map(abs, [1], host="no-such-host.invalid")


def test_an_address_that_is_not_this_machine(local_map: Callable[..., list[Any]]) -> None:
    with pytest.raises(ConfigurationError, match="cannot listen on 192.0.2.1"):
        local_map(abs, [1], host="192.0.2.1")


@pytest.mark.parametrize("options, words", [
    ({"retries": -1}, "retries=-1"),
    ({"workers": 0}, "workers=0"),
    ({"timeout": 0}, "timeout=0"),
    ({"errors": "ignore"}, "errors='ignore'"),
    ({"backend": "slurm"}, "backend='slurm'"),
    ({"heartbeat_interval": 10, "heartbeat_timeout": 5}, "heartbeat_timeout=5"),
    ({"env": {"A": 1}}, "env="),
    ({"job_name": "1st"}, "job_name='1st'"),
    ({"retry_exceptions": ("ValueError",)}, "retry_exceptions="),
])
def test_bad_options(local_map: Callable[..., list[Any]], options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        local_map(abs, [1], **options)
    assert words in str(caught.value)


def test_environment_defaults_are_read_and_checked(local_map: Callable[..., list[Any]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHEEPDOG_RETRIES", "many")
    with pytest.raises(ConfigurationError, match="SHEEPDOG_RETRIES='many'"):
        local_map(abs, [1])
    monkeypatch.setenv("SHEEPDOG_RETRIES", "0")
    monkeypatch.setenv("SHEEPDOG_BACKEND", "nope")
    with pytest.raises(ConfigurationError, match="SHEEPDOG_BACKEND='nope'"):
        sheepdog_drmaa.map(abs, [1], progress=False)


PROBE = "import sheepdog_drmaa; sheepdog_drmaa.map(abs, [1], backend='drmaa', progress=False)"


def drmaa_error_in_fresh_python(environment: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(sheepdog_drmaa.__file__))))
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_missing_drmaa_library_names_the_variable() -> None:
    message = drmaa_error_in_fresh_python({"DRMAA_LIBRARY_PATH": "/nonexistent/libdrmaa.so"})
    assert "BackendUnavailable" in message and "DRMAA_LIBRARY_PATH" in message


@pytest.mark.gridengine
def test_the_static_tls_error_names_the_fix(gridengine: Cluster) -> None:
    message = drmaa_error_in_fresh_python({})
    assert "BackendUnavailable" in message
    assert "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096" in message


def test_auto_falls_back_to_local_with_a_warning(store: str, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DRMAA_LIBRARY_PATH", "/nonexistent/libdrmaa.so")
    import sheepdog_drmaa.backends.drmaa as drmaa_backend
    monkeypatch.setattr(drmaa_backend, "_import_drmaa", lambda: (_ for _ in ()).throw(BackendUnavailable("no lib")))
    assert sheepdog_drmaa.map(abs, [-1, -2], backend="auto", store=store, progress=False) == [1, 2]
    assert "running workers as local processes" in caplog.text and "no lib" in caplog.text


def test_a_store_that_cannot_be_written(local_map: Callable[..., list[Any]], tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="cannot open the sweep store.*store="):
        local_map(abs, [1], store=str(tmp_path / "file" / "sweeps.sqlite"))


def test_a_loopback_host_is_warned_about_on_a_cluster(store: str, caplog: pytest.LogCaptureFixture,
                                                      cluster: Cluster) -> None:
    assert sheepdog_drmaa.map(abs, [-1], backend="drmaa", store=store, progress=False, host="127.0.0.1") == [1]
    assert "resolves only to the loopback address 127.0.0.1" in caplog.text


def test_a_job_the_scheduler_refuses_is_a_clear_error(store: str, cluster: Cluster) -> None:
    native_spec = {"gridengine": "-l nosuchresource=1", "slurm": "--constraint=nosuchresource"}[cluster.name]
    with pytest.raises(sheepdog_drmaa.SubmissionRefused, match="refused the workers' job.*nosuchresource"):
        sheepdog_drmaa.map(abs, [1], backend="drmaa", store=store, progress=False, native_spec=native_spec)


def test_an_unknown_queue_is_refused_before_anything_is_submitted_naming_the_real_ones(store: str,
                                                                                       cluster: Cluster) -> None:
    with pytest.raises(sheepdog_drmaa.ConfigurationError, match="nope.q") as refused:
        sheepdog_drmaa.map(abs, [1], backend="drmaa", store=store, progress=False, queue="nope.q")
    assert {"gridengine": "all.q", "slurm": "debug"}[cluster.name] in str(refused.value)
    assert not cluster.jobs()


@pytest.mark.gridengine
@pytest.mark.parametrize("cluster", ["gridengine"], indirect=True)
def test_native_spec_reaches_grid_engine(store: str, cluster: Cluster) -> None:
    def allocate(megabytes: int) -> int:
        return len(bytearray(megabytes * 1024 * 1024))
    results = sheepdog_drmaa.map(allocate, [1, 2000], backend="drmaa", store=store, progress=False,
                                 native_spec="-l h_vmem=400M", errors="return")
    assert results[0] == 1024 * 1024
    assert results[1].cause == "exception" and "MemoryError" in results[1].summary
