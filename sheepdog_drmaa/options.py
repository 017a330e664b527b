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
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigurationError
from .protocol import qualified_name

if TYPE_CHECKING:  # only for the annotation: options are parsed without loading any backend
    from .backends import Backend

ENV_PREFIX = "SHEEPDOG_"
DEFAULT_STORE = os.path.join(".sheepdog", "sweeps.sqlite")
# Beside the store, written by a live dashboard of it: {"url": ..., "pid": ...} (a notebook links it).
DASHBOARD_ANNOUNCEMENT = "dashboard.json"
DEFAULT_MAX_RESULT_SIZE = 256 << 20
DEFAULT_OUTPUT_LIMIT = 64 << 10  # bytes of each stream kept per attempt (head and tail)
# SQLite stores no value longer than 1e9 bytes; the pickled exception and envelope need room too.
LARGEST_RESULT_SIZE = 900_000_000
# The output kept travels in the task's report, beside its result: a few MB at most.
LARGEST_OUTPUT_LIMIT = 16 << 20
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Options:
    """Every option of a sweep, resolved and checked once: sizes in bytes, durations in seconds."""

    backend: str | Backend = "auto"  # a name, or a Backend object made by the caller
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
    retry_exceptions: tuple[str, ...] = ()  # the qualified names of the classes given (module.QualName)
    timeout: float | None = None
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 60.0
    outage_wait: float = 120.0            # seconds an unreachable scheduler is waited for: to open, to submit
                                          # with no worker alive, to remove what is left at the end
    store: str = DEFAULT_STORE
    max_result_size: int = DEFAULT_MAX_RESULT_SIZE
    walltime: float | None = None
    task_time: float | None = None
    memory: int | None = None             # per worker, in bytes
    cores: int | None = None              # slots (CPUs) per worker
    gpus: int | None = None
    project: str | None = None            # Grid Engine -P, Slurm --account
    parallel_env: str = "smp"             # Grid Engine's parallel environment for cores=
    memory_resource: str = "h_vmem"       # Grid Engine's complex that memory= asks for
    setup: tuple[str, ...] = ()           # shell lines run in the job before the worker starts
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    name: str | None = None
    resume: bool = True
    detach: bool = False                  # driven by a process of its own, which outlives the caller
    idle_timeout: float = 60.0            # an Executor's worker with nothing to do exits after this

    def log_directory(self, sweep_id: str) -> str:
        """Where the sweep's workers (and a detached sweep's driver) write their logs: log_dir=, else
        ``logs/<sweep id>`` beside the store."""
        return os.path.abspath(self.log_dir or os.path.join(os.path.dirname(os.path.abspath(self.store)), "logs",
                                                            sweep_id))

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
    raise ValueError("expected a number of bytes or a size such as '512M' or '1G'")


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
    raise ValueError("expected seconds or H:MM:SS")


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


def _parse_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _parse_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None


_FROM_ENV: dict[str, Callable[[str], Any]] = {
    "backend": str, "workers": _parse_whole, "max_workers": _parse_whole, "tasks_per_worker": _parse_whole,
    "host": str, "bind": str, "port": _parse_whole, "python": str, "env": _parse_env_mapping, "queue": str,
    "native_spec": str, "job_name": str, "log_dir": str, "progress": _parse_bool, "errors": str,
    "retries": _parse_whole, "timeout": _parse_seconds, "heartbeat_interval": _parse_seconds,
    "heartbeat_timeout": _parse_seconds, "outage_wait": _parse_seconds, "store": str, "max_result_size": str,
    "output_limit": str, "walltime": str, "task_time": str, "memory": str, "cores": _parse_whole,
    "gpus": _parse_whole, "project": str, "parallel_env": str, "memory_resource": str,
    "setup": lambda text: tuple(text.splitlines()), "detach": _parse_bool,
    "idle_timeout": _parse_seconds,
}


def resolve(given: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Options:
    """Options from explicit values (None means unset), then ``SHEEPDOG_*`` variables, then defaults.

    A value read from a variable that is not valid is refused naming that variable, not the option.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # option -> the variable it was read from, with its text
    for option in dataclasses.fields(Options):
        value = given.get(option.name)
        if value is None and option.name in _FROM_ENV:
            variable = ENV_PREFIX + option.name.upper()
            text = environ.get(variable, "")
            if text != "":
                sources[option.name] = f"{variable}={text!r}"
                try:
                    value = _FROM_ENV[option.name](text)
                except ValueError as error:
                    raise ConfigurationError(f"{sources[option.name]}: {error}") from None
        if value is not None:
            values[option.name] = value
    return _checked(values, sources)


def _checked(values: Mapping[str, Any], sources: Mapping[str, str]) -> Options:
    """The options, every value checked and normalised (sizes and durations made numbers);
    ConfigurationError names the first one that is not valid as it was given: ``name=value``, or
    the ``sources`` entry of an option read from the environment (``SHEEPDOG_MEMORY='lots'``)."""
    raw = {option.name: values[option.name] if option.name in values else _default(option)
           for option in dataclasses.fields(Options)}

    def given(name: str) -> str:
        return sources.get(name) or f"{name}={raw[name]!r}"

    checked = dict(raw)
    for name, check in _CHECKS.items():
        try:
            checked[name] = check(raw[name])
        except ValueError as error:
            raise ConfigurationError(f"{given(name)}: {error}") from None
    options = Options(**checked)
    if options.heartbeat_timeout <= options.heartbeat_interval:
        raise ConfigurationError(f"{given('heartbeat_timeout')} must be longer than {given('heartbeat_interval')}, "
                                 "or every running task would look lost")
    try:
        options.runtime_limit()
    except ValueError as error:
        raise ConfigurationError(f"{given('native_spec')}: {error}") from None
    return options


def _default(option: dataclasses.Field[Any]) -> Any:
    if option.default_factory is not dataclasses.MISSING:
        return option.default_factory()
    return option.default


# Each check takes an option's value and returns it normalised, or raises ValueError saying what
# was expected (_checked puts the option or variable in front).

def _whole(least: int, optional: bool = True) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"expected a whole number of at least {least}")
        return value
    return check


def _seconds(optional: bool = True) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError("expected a number of seconds greater than 0")
        return value
    return check


def _duration(value: Any) -> float | None:
    return None if value is None else _seconds()(parse_duration(value))


def _size(least: int, most: int, what: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        size = parse_size(value)
        if not least <= size <= most:
            raise ValueError(f"expected {least:,} to {most:,} bytes {what}")
        return size
    return check


def _one_of(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}")
        return value
    return check


def _backend(value: Any) -> Any:
    """A backend's name, or a Backend object made by the caller (a site's own, or a test's)."""
    from .backends import BACKEND_NAMES
    if not isinstance(value, str) and all(callable(getattr(value, call, None)) for call in _BACKEND_CALLS):
        return value
    return _one_of(*BACKEND_NAMES)(value)


_BACKEND_CALLS = ("submit", "wait_any", "terminate", "running_hosts", "check_request", "close")


def _port(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("expected 0 (any free port) to 65535")
    return value


def _env(value: Any) -> Any:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected a dict of str to str (extra environment for the workers)")
    return value


def _retry_exceptions(value: Any) -> tuple[str, ...]:
    """The classes' qualified names: a report names the classes of its exception, and the driver
    needs none of the user's modules to compare them."""
    classes = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in classes):
        raise ValueError("expected an exception class or a tuple of them")
    return tuple(qualified_name(t) for t in classes)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


def _python(value: str) -> str:
    return os.path.abspath(value) if not os.path.isabs(value) and os.sep in value else value


def _job_name(value: str) -> str:
    if value and (value[0].isdigit() or any(c in value for c in " /:@\\*?")):
        raise ValueError("Grid Engine job names must not start with a digit or contain spaces or any of / : @ \\ * ?")
    return value


def _name(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("expected a non-empty string")
    return value


# The smallest memory= taken: below it, a typo ("4" meant as 4G) would leave no room for Python.
SMALLEST_MEMORY = 16 << 20
_SCHEDULER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _memory(value: Any) -> int | None:
    """Bytes per worker (the scheduler itself is asked later, by the backend, whether it can give them)."""
    if value is None:
        return None
    size = parse_size(value)
    if size < SMALLEST_MEMORY:
        raise ValueError(f"{size:,} bytes per worker is too little for Python; give a size with its unit, such as "
                         "'4G' or '512M'")
    return size


def _scheduler_name(optional: bool = False) -> Callable[[Any], Any]:
    """project=, parallel_env= and memory_resource=, as values (the backend asks the scheduler later)."""
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not _SCHEDULER_NAME.fullmatch(value):
            raise ValueError("expected a name as the scheduler spells it (letters, digits, '_', '.' and '-', "
                             "starting with a letter)")
        return value
    return check


def _setup_lines(setup: Any) -> tuple[str, ...]:
    """The set-up lines as a tuple: a string is taken line by line; each line must parse as /bin/sh.

    The syntax is checked here, with this host's /bin/sh, because a syntax error would end the job's
    shell before it could say which line was wrong.
    """
    if isinstance(setup, str):
        setup = setup.splitlines()
    if not isinstance(setup, (list, tuple)) or not all(isinstance(line, str) for line in setup):
        raise ValueError("expected a list of shell lines, such as "
                         "setup=['module load python/3.11', '. /shared/venv/bin/activate']")
    lines = tuple(part for line in setup for part in line.splitlines() if part.strip())
    for number, line in enumerate(lines, 1):
        try:
            checked = subprocess.run(["/bin/sh", "-n", "-c", line], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return lines  # no /bin/sh here to ask: the job will say
        if checked.returncode != 0:
            raise ValueError(f"line {number} is not valid /bin/sh: {line!r}: "
                             f"{checked.stderr.strip() or 'syntax error'}")
    return lines


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "backend": _backend, "workers": _whole(1), "max_workers": _whole(1, optional=False),
    "tasks_per_worker": _whole(1), "retries": _whole(0, optional=False), "port": _port, "timeout": _seconds(),
    "heartbeat_interval": _seconds(optional=False), "heartbeat_timeout": _seconds(optional=False),
    "outage_wait": _seconds(optional=False), "idle_timeout": _seconds(optional=False),
    "max_result_size": _size(1, LARGEST_RESULT_SIZE, "(the sweep store cannot hold larger values)"),
    "walltime": _duration, "task_time": _duration,
    "output_limit": _size(0, LARGEST_OUTPUT_LIMIT, "of each stream kept per attempt"),
    "errors": _one_of("raise", "return"), "env": _env, "retry_exceptions": _retry_exceptions, "python": _python,
    "job_name": _job_name, "name": _name, "memory": _memory, "cores": _whole(1), "gpus": _whole(1),
    "project": _scheduler_name(optional=True), "parallel_env": _scheduler_name(),
    "memory_resource": _scheduler_name(), "setup": _setup_lines, "resume": _flag, "detach": _flag,
}


def stored_form(options: Options) -> dict[str, Any]:
    """The options as JSON values by name, for a driver in another process to resolve again with
    :func:`from_stored`. Only a backend's name can be stored, not a Backend object."""
    if not isinstance(options.backend, str):
        raise ConfigurationError("a sweep run with backend= a Backend object cannot be stored for another process "
                                 "to drive; pass backend= a name ('drmaa' or 'local')")
    return {option.name: getattr(options, option.name) for option in dataclasses.fields(Options)}


def from_stored(values: Mapping[str, Any]) -> Options:
    """Options stored by :func:`stored_form`, checked again. Names this version does not know are
    left out; options it has and the stored form lacks take their defaults."""
    known = {option.name for option in dataclasses.fields(Options)}
    options = _checked({name: value for name, value in values.items()
                        if name in known and name != "retry_exceptions"}, {})
    return dataclasses.replace(options, retry_exceptions=tuple(values.get("retry_exceptions", ())))
