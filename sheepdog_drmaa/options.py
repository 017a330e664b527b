"""The options of a sweep: defaults, ``SHEEPDOG_*`` environment variables, and validation.

Every check here runs before anything is submitted, and every message says what to change.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigurationError

ENV_PREFIX = "SHEEPDOG_"
DEFAULT_STORE = os.path.join(".sheepdog", "sweeps.sqlite")
DEFAULT_MAX_RESULT_SIZE = 256 << 20
DEFAULT_OUTPUT_LIMIT = 64 << 10  # bytes of each stream kept per attempt (head and tail)
# SQLite stores no value longer than 1e9 bytes; the pickled exception and envelope need room too.
LARGEST_RESULT_SIZE = 900_000_000
# The output kept travels in the task's report, beside its result: a few MB at most.
LARGEST_OUTPUT_LIMIT = 16 << 20
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass
class Options:
    backend: str = "auto"
    workers: int | None = None
    max_workers: int = 1000
    tasks_per_worker: int | None = None
    host: str | None = None
    bind: str | None = None
    port: int = 0
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    queue: str | None = None
    native_spec: str | None = None
    job_name: str = "sheepdog"
    log_dir: str | None = None
    progress: bool | None = None
    errors: str = "raise"
    retries: int = 3
    retry_exceptions: tuple[type, ...] = ()
    timeout: float | None = None
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 60.0
    store: str = DEFAULT_STORE
    max_result_size: int = DEFAULT_MAX_RESULT_SIZE
    walltime: float | None = None
    task_time: float | None = None
    memory: int | str | None = None       # per worker; bytes once validated
    cores: int | None = None              # slots (CPUs) per worker
    gpus: int | None = None
    project: str | None = None            # Grid Engine -P, Slurm --account
    parallel_env: str = "smp"             # Grid Engine's parallel environment for cores=
    memory_resource: str = "h_vmem"       # Grid Engine's complex that memory= asks for
    setup: tuple[str, ...] = ()           # shell lines run in the job before the worker starts
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    name: str | None = None
    resume: bool = True

    def runtime_limit(self) -> float | None:
        """Each worker's runtime limit in seconds: walltime=, else an ``h_rt`` (Grid Engine) or a
        ``-t``/``--time`` (Slurm) in native_spec (the last one given, as the scheduler reads it),
        else none known."""
        if self.walltime is not None:
            return self.walltime
        found = [(m.start(), parse_duration(m.group(1))) for m in _H_RT.finditer(self.native_spec or "")]
        found += [(m.start(), parse_slurm_time(m.group(1))) for m in _SLURM_TIME.finditer(self.native_spec or "")]
        return max(found)[1] if found else None


def _parse_env_mapping(text: str) -> dict[str, str]:
    """``SHEEPDOG_ENV``: a JSON object, or ``KEY=VALUE`` pairs separated by commas."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError("expected KEY=VALUE pairs separated by commas, or a JSON object")
    return {key.strip(): value for key, value in pairs}


def parse_size(value: Any) -> int:
    """A size in bytes from an int or a string such as "512M" or "1G" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        number = text[: len(text) - len(unit)]
        try:
            return int(float(number) * _SIZE_UNITS[unit])
        except ValueError:
            pass
    raise ValueError(f"expected a number of bytes or a size such as '512M' or '1G', got {value!r}")


def parse_duration(value: Any) -> float:
    """Seconds from a number, or from "H:MM:SS", "MM:SS" or a plain number in a string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            seconds = 0.0
            for field in value.strip().split(":"):
                seconds = seconds * 60 + float(field)
            if value.count(":") <= 2:
                return seconds
        except ValueError:
            pass
    raise ValueError(f"expected seconds or H:MM:SS, got {value!r}")


_H_RT = re.compile(r"(?:^|[\s,])h_rt=([0-9:.]+)")
_SLURM_TIME = re.compile(r"(?:^|\s)(?:-t\s*|--time[=\s])([0-9][0-9:-]*)")


def parse_slurm_time(text: str) -> float:
    """Seconds from a ``-t``/``--time`` as slurm-drmaa reads it: "H:MM" or "H:MM:SS", whose seconds
    it drops (slurm-drmaa 1.1.6, measured: "0:0:20" is no limit at all). sbatch's other forms
    (minutes alone, "D-H...") it refuses at submission, so they are refused here first."""
    fields = text.split(":")
    if len(fields) not in (2, 3) or not all(field.isdigit() for field in fields):
        raise ValueError(f"slurm-drmaa reads -t/--time only as H:MM or H:MM:SS (seconds dropped), got {text!r}; "
                         "or pass walltime=")
    hours, minutes = int(fields[0]), int(fields[1])
    return float((hours * 60 + minutes) * 60)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


_FROM_ENV: dict[str, Callable[[str], Any]] = {
    "backend": str, "workers": int, "max_workers": int, "tasks_per_worker": int, "host": str,
    "bind": str, "port": int, "python": str, "env": _parse_env_mapping, "queue": str,
    "native_spec": str, "job_name": str, "log_dir": str, "progress": _parse_bool, "errors": str,
    "retries": int, "timeout": float, "heartbeat_interval": float, "heartbeat_timeout": float,
    "store": str, "max_result_size": str, "output_limit": str, "walltime": str, "task_time": str,
    "memory": str, "cores": int, "gpus": int, "project": str, "parallel_env": str, "memory_resource": str,
    "setup": lambda text: tuple(text.splitlines()),
}


def resolve(given: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Options:
    """Options from explicit values (None means unset), then ``SHEEPDOG_*`` variables, then defaults."""
    values: dict[str, Any] = {}
    for option in dataclasses.fields(Options):
        value = given.get(option.name)
        if value is None and option.name in _FROM_ENV:
            variable = ENV_PREFIX + option.name.upper()
            if environ.get(variable, "") != "":
                try:
                    value = _FROM_ENV[option.name](environ[variable])
                except ValueError as error:
                    raise ConfigurationError(f"{variable}={environ[variable]!r} is not valid: {error}") from None
        if value is not None:
            values[option.name] = value
    options = Options(**values)
    validate(options)
    return options


def _positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r}: expected a whole number of at least 1")


def _positive_number(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name}={value!r}: expected a number of seconds greater than 0")


def validate(options: Options) -> None:
    from .backends import BACKEND_NAMES

    if options.backend not in BACKEND_NAMES:
        raise ConfigurationError(f"backend={options.backend!r}: expected one of {', '.join(BACKEND_NAMES)}")
    _positive_int("workers", options.workers)
    _positive_int("max_workers", options.max_workers, allow_none=False)
    _positive_int("tasks_per_worker", options.tasks_per_worker)
    if isinstance(options.retries, bool) or not isinstance(options.retries, int) or options.retries < 0:
        raise ConfigurationError(f"retries={options.retries!r}: expected a whole number of at least 0")
    if isinstance(options.port, bool) or not isinstance(options.port, int) or not 0 <= options.port <= 65535:
        raise ConfigurationError(f"port={options.port!r}: expected 0 (any free port) to 65535")
    _positive_number("timeout", options.timeout)
    _positive_number("heartbeat_interval", options.heartbeat_interval, allow_none=False)
    _positive_number("heartbeat_timeout", options.heartbeat_timeout, allow_none=False)
    if options.heartbeat_timeout <= options.heartbeat_interval:
        raise ConfigurationError(
            f"heartbeat_timeout={options.heartbeat_timeout!r} must be longer than heartbeat_interval="
            f"{options.heartbeat_interval!r}, or every running task would look lost")
    try:
        options.max_result_size = parse_size(options.max_result_size)
    except ValueError as error:
        raise ConfigurationError(f"max_result_size: {error}") from None
    for name in ("walltime", "task_time"):
        if getattr(options, name) is not None:
            try:
                setattr(options, name, parse_duration(getattr(options, name)))
            except ValueError as error:
                raise ConfigurationError(f"{name}: {error}") from None
            _positive_number(name, getattr(options, name))
    try:
        options.runtime_limit()
    except ValueError as error:
        raise ConfigurationError(f"native_spec={options.native_spec!r}: {error}") from None
    try:
        options.output_limit = parse_size(options.output_limit)
    except ValueError as error:
        raise ConfigurationError(f"output_limit: {error}") from None
    if not 0 <= options.output_limit <= LARGEST_OUTPUT_LIMIT:
        raise ConfigurationError(f"output_limit={options.output_limit!r}: expected 0 to {LARGEST_OUTPUT_LIMIT:,} bytes "
                                 "of each stream kept per attempt")
    if not 0 < options.max_result_size <= LARGEST_RESULT_SIZE:
        raise ConfigurationError(f"max_result_size={options.max_result_size!r}: expected more than 0 and at most "
                                 f"{LARGEST_RESULT_SIZE:,} bytes (the sweep store cannot hold larger values)")
    if options.errors not in ("raise", "return"):
        raise ConfigurationError(f"errors={options.errors!r}: expected 'raise' or 'return'")
    if not isinstance(options.env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in options.env.items()):
        raise ConfigurationError("env= must be a dict of str to str (extra environment for the workers)")
    if isinstance(options.retry_exceptions, type):
        options.retry_exceptions = (options.retry_exceptions,)
    options.retry_exceptions = tuple(options.retry_exceptions)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in options.retry_exceptions):
        raise ConfigurationError("retry_exceptions= must be an exception class or a tuple of them")
    if not os.path.isabs(options.python) and os.sep in options.python:
        options.python = os.path.abspath(options.python)
    if options.job_name and (options.job_name[0].isdigit() or any(c in options.job_name for c in " /:@\\*?")):
        raise ConfigurationError(
            f"job_name={options.job_name!r}: Grid Engine job names must not start with a digit or contain "
            "spaces or any of / : @ \\ * ?")
    if options.name is not None and (not isinstance(options.name, str) or not options.name.strip()):
        raise ConfigurationError(f"name={options.name!r}: expected a non-empty string")
    _validate_resources(options)
    options.setup = _setup_lines(options.setup)


# The smallest memory= taken: below it, a typo ("4" meant as 4G) would leave no room for Python.
SMALLEST_MEMORY = 16 << 20
_SCHEDULER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _validate_resources(options: Options) -> None:
    """memory=, cores=, gpus=, project=, parallel_env= and memory_resource=, as values (the scheduler
    itself is asked later, by the backend, whether it knows the names)."""
    if options.memory is not None:
        try:
            options.memory = parse_size(options.memory)
        except ValueError as error:
            raise ConfigurationError(f"memory: {error} (per worker)") from None
        if options.memory < SMALLEST_MEMORY:
            raise ConfigurationError(f"memory={options.memory!r} bytes per worker is too little for Python; give a "
                                     "size with its unit, such as memory='4G' or '512M'")
    _positive_int("cores", options.cores)
    _positive_int("gpus", options.gpus)
    for name in ("project", "parallel_env", "memory_resource"):
        value = getattr(options, name)
        if value is None and name == "project":
            continue
        if not isinstance(value, str) or not _SCHEDULER_NAME.fullmatch(value):
            raise ConfigurationError(f"{name}={value!r}: expected a name as the scheduler spells it (letters, "
                                     "digits, '_', '.' and '-', starting with a letter)")


def _setup_lines(setup: Any) -> tuple[str, ...]:
    """The set-up lines as a tuple: a string is taken line by line; each line must parse as /bin/sh.

    The syntax is checked here, with this host's /bin/sh, because a syntax error would end the job's
    shell before it could say which line was wrong.
    """
    if isinstance(setup, str):
        setup = setup.splitlines()
    if not isinstance(setup, (list, tuple)) or not all(isinstance(line, str) for line in setup):
        raise ConfigurationError(f"setup={setup!r}: expected a list of shell lines, such as "
                                 "setup=['module load python/3.11', '. /shared/venv/bin/activate']")
    lines = tuple(part for line in setup for part in line.splitlines() if part.strip())
    for number, line in enumerate(lines, 1):
        try:
            checked = subprocess.run(["/bin/sh", "-n", "-c", line], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return lines  # no /bin/sh here to ask: the job will say
        if checked.returncode != 0:
            raise ConfigurationError(f"setup line {number} is not valid /bin/sh: {line!r}: "
                                     f"{checked.stderr.strip() or 'syntax error'}")
    return lines
