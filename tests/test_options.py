"""Option values checked before anything is submitted; runtime limits read from native_spec."""
from __future__ import annotations

from typing import Any

import pytest

from sheepdog_drmaa import ConfigurationError
from sheepdog_drmaa import options as options_module
from sheepdog_drmaa.options import parse_slurm_time, resolve


@pytest.mark.parametrize("native_spec, seconds", [
    ("-l h_rt=0:0:20", 20),
    ("-l h_vmem=1G,h_rt=3600", 3600),
    ("-t 5:30", (5 * 60 + 30) * 60),  # H:MM, as slurm-drmaa reads it (not sbatch's MM:SS)
    ("--time=1:30:00", 5400),         # H:MM:SS
    ("-t 0:01:50", 60),               # slurm-drmaa drops the seconds
    ("-p long --time=0:10 --mem=100", 600),
    ("-l h_rt=60 --time=0:05", 300),  # the last one given, as the scheduler reads it
    ("--mem=100", None),
    (None, None),
])
def test_the_runtime_limit_is_read_from_native_spec(native_spec: str | None, seconds: int | None) -> None:
    assert resolve({"native_spec": native_spec}, environ={}).runtime_limit() == seconds


def test_walltime_wins_over_native_spec() -> None:
    assert resolve({"native_spec": "-t 1:30", "walltime": "0:01:00"}, environ={}).runtime_limit() == 60


@pytest.mark.parametrize("text", ["90", "1-2:30", "1-", "a", "1:2:3:4"])
def test_slurm_times_slurm_drmaa_would_refuse_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="only as H:MM or H:MM:SS"):
        parse_slurm_time(text)


def test_a_runtime_request_in_native_spec_that_cannot_be_read_is_refused_before_the_sweep() -> None:
    with pytest.raises(ConfigurationError, match="native_spec='-t 90'.*H:MM"):
        resolve({"native_spec": "-t 90"}, environ={})


def test_resources_are_parsed_and_kept() -> None:
    options = resolve({"memory": "1.5G", "cores": 4, "gpus": 1, "project": "lab-1", "memory_resource": "mem_free"},
                      environ={})
    assert (options.memory, options.cores, options.gpus, options.project) == (3 << 29, 4, 1, "lab-1")
    assert (options.parallel_env, options.memory_resource) == ("smp", "mem_free")


def test_resources_come_from_the_environment_too() -> None:
    options = resolve({}, environ={"SHEEPDOG_MEMORY": "2G", "SHEEPDOG_CORES": "2", "SHEEPDOG_SETUP": "a=1\nb=2"})
    assert (options.memory, options.cores, options.setup) == (2 << 30, 2, ("a=1", "b=2"))


@pytest.mark.parametrize("given, words", [
    ({"memory": "lots"}, "memory='lots': expected a number of bytes"),
    ({"memory": 4}, "too little for Python"),
    ({"cores": 0}, "cores=0: expected a whole number"),
    ({"cores": 2.5}, "cores=2.5"),
    ({"gpus": True}, "gpus=True"),
    ({"project": "my lab"}, "project='my lab': expected a name"),
    ({"parallel_env": ""}, "parallel_env=''"),
    ({"memory_resource": "h_vmem=4G"}, "memory_resource='h_vmem=4G'"),
    ({"setup": [1]}, "expected a list of shell lines"),
    ({"setup": ["echo it's"]}, "line 1 is not valid /bin/sh: \"echo it's\""),
])
def test_bad_resource_values_are_refused_saying_what_was_wrong(given: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve(given, environ={})
    assert words in str(caught.value)


def test_setup_lines_may_be_one_string_of_lines() -> None:
    assert resolve({"setup": "module load python\n\n. venv/bin/activate\n"}, environ={}).setup == (
        "module load python", ". venv/bin/activate")


# A value for each option read from SHEEPDOG_* that is not valid, at reading or at checking.
INVALID_FROM_ENV = {
    "backend": "nope", "workers": "abc", "max_workers": "0", "tasks_per_worker": "-2", "port": "70000",
    "env": "A", "native_spec": "-t 90", "job_name": "1st", "progress": "maybe", "errors": "ignore",
    "retries": "-1", "timeout": "0", "heartbeat_interval": "soon", "heartbeat_timeout": "5",  # below the interval
    "outage_wait": "-1", "detach": "sometimes", "idle_timeout": "0",
    "max_result_size": "huge", "output_limit": "1T", "walltime": "soon", "task_time": "1:2:3:4", "memory": "lots",
    "cores": "0", "gpus": "1.5", "project": "my lab", "parallel_env": "a b", "memory_resource": "h_vmem=4G",
    "setup": "echo it's",
}
# Any text is a valid value of these here; what they name is checked later (an address, a path).
ANY_TEXT = {"host", "bind", "python", "queue", "log_dir", "store"}


def test_every_option_read_from_the_environment_has_an_invalid_value_below() -> None:
    assert set(INVALID_FROM_ENV) | ANY_TEXT == set(options_module._FROM_ENV)


@pytest.mark.parametrize("name, text", sorted(INVALID_FROM_ENV.items()))
def test_an_invalid_value_from_the_environment_names_its_variable(name: str, text: str) -> None:
    variable = f"SHEEPDOG_{name.upper()}"
    with pytest.raises(ConfigurationError) as caught:
        resolve({}, environ={variable: text})
    assert str(caught.value).startswith(f"{variable}={text!r}"), str(caught.value)


@pytest.mark.parametrize("name, text", [("memory", "lots"), ("workers", "0"), ("heartbeat_timeout", "5")])
def test_the_same_value_given_as_an_argument_names_the_option(name: str, text: str) -> None:
    value: int | str = int(text) if text.isdigit() else text
    with pytest.raises(ConfigurationError) as caught:
        resolve({name: value}, environ={})
    assert str(caught.value).startswith(f"{name}={value!r}") and "SHEEPDOG_" not in str(caught.value)
