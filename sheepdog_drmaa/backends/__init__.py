"""Schedulers that run workers: one small interface, a DRMAA and a local implementation."""
from __future__ import annotations

import base64
import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from ..errors import BackendUnavailable, ConfigurationError, SchedulerOutage
from ..model import ExitInfo
from ..protocol import ENV_SETUP_SCRIPT, EXIT_SETUP_FAILED

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "drmaa", "local")


@dataclass(frozen=True)
class WorkerSpec:
    """How to start workers: the same for every worker of one submission."""

    python: str
    environment: dict[str, str]
    working_directory: str
    log_dir: str
    job_name: str
    queue: str | None = None
    native_spec: str | None = None
    walltime: float | None = None  # each worker's runtime limit, asked of the scheduler
    avoid_hosts: tuple[str, ...] = ()  # hosts whose workers never reached the server: not to be used
    memory: int | None = None  # bytes per worker
    cores: int | None = None  # slots (CPUs) per worker
    gpus: int | None = None
    project: str | None = None  # Grid Engine -P, Slurm --account
    parallel_env: str = "smp"  # Grid Engine's parallel environment that cores= asks for
    memory_resource: str = "h_vmem"  # Grid Engine's complex that memory= asks for (per slot)
    setup: tuple[str, ...] = ()  # shell lines run in the job before Python starts

    def __post_init__(self) -> None:
        # A worker started through /bin/sh finds its script in its environment, in base64 without
        # padding: slurm-drmaa wraps arguments in '...' unescaped, and Grid Engine's DRMAA cuts a
        # variable's value at its first "=" (both measured), so neither may carry shell text.
        if _needs_shell(self):
            script = _encoded(setup_script(self))
            object.__setattr__(self, "environment", {**self.environment, ENV_SETUP_SCRIPT: script})


# A worker an earlier client started: (id, host it said hello from, its process group there).
Leftover = tuple[str, Optional[str], Optional[int]]


class Backend(Protocol):
    """What the driver needs from a scheduler. All calls come from one thread, except ``check_request``
    and ``execution_hosts``, which ``map`` runs at the same time in two threads: neither may call the
    DRMAA library."""

    name: str

    @property
    def max_array_size(self) -> int:
        """The largest array one bulk submission may ask for."""

    def submit(self, count: int, spec: WorkerSpec) -> list[str]:
        """Start ``count`` workers as one bulk submission; return their ids."""

    def check_request(self, spec: WorkerSpec) -> None:
        """Raise ConfigurationError for a request this scheduler would refuse, before anything is
        stored or submitted."""

    def running_hosts(self) -> dict[str, str | None]:
        """Workers the scheduler shows started (running, or being sent to their host), each with the
        host it was sent to where known. Cheap: answered from what the backend last listed."""

    def execution_hosts(self, spec: WorkerSpec) -> list[str] | None:
        """The names or addresses of the execution hosts that could run ``spec``'s workers, which must
        reach the server at the address workers are told; [] when workers run on this machine only,
        None when they cannot be listed."""

    def wait_any(self, timeout: float) -> ExitInfo | None:
        """The exit information of one finished worker, or None after ``timeout`` seconds."""

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """Remove these workers, queued or running; unknown or finished ids are ignored."""

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Remove workers that an earlier, dead client of the same sweep started."""

    def close(self) -> None:
        """Release the scheduler session."""


def _needs_shell(spec: WorkerSpec) -> bool:
    """Set-up lines need the job's shell; so does an interpreter path that is not one plain word
    (Grid Engine's DRMAA refuses a remote command with a space in it)."""
    return bool(spec.setup) or shlex.quote(spec.python) != spec.python


def worker_command(spec: WorkerSpec) -> list[str]:
    """The job's command: the worker's Python, or /bin/sh running the set-up lines and then it."""
    if _needs_shell(spec):
        return ["/bin/sh", "-c", f"command -v base64 >/dev/null || {{ echo \"sheepdog: base64 is not on PATH here; the "
                                 f"set-up lines need it\" >&2; exit {EXIT_SETUP_FAILED}; }}; "
                                 f'eval "$(echo "${ENV_SETUP_SCRIPT}" | base64 -d)"']
    return [spec.python, "-m", "sheepdog_drmaa.worker"]


def _encoded(script: str) -> str:
    """``script`` in base64 with no "=" (blank lines added to make its length a multiple of 3)."""
    data = script.encode()
    data += b"\n" * (-len(data) % 3)
    return base64.b64encode(data).decode()


def setup_script(spec: WorkerSpec) -> str:
    """The /bin/sh script that runs each set-up line in the job's shell, then execs the worker.

    Each line's output is kept in a temporary file and copied to the job's stdout when the line
    succeeds. A line that fails, or that ends the shell itself (``exit``, a sourced script that
    exits), stops the script: its output and then its number, text and status (last, where a tail
    of the file shows them) go to the job's stderr, the file the client quotes when workers cannot
    start; the temporary file is removed and the job exits with EXIT_SETUP_FAILED. ``eval`` runs
    each line in the shell itself, so ``export``, ``.`` and ``module load`` carry over to the
    worker. Descriptor 9 keeps the job's stderr: a line that calls ``exit`` leaves its redirection
    to the temporary file in force (bash) while the EXIT trap runs.
    """
    lines = [f"unset {ENV_SETUP_SCRIPT}"]
    if spec.setup:
        lines += [
            'sheepdog_log=$(mktemp) || { echo "sheepdog: cannot create a temporary file for the set-up lines" >&2; '
            f"exit {EXIT_SETUP_FAILED}; }}",
            "exec 9>&2",
            "sheepdog_failed() {",
            '  cat "$sheepdog_log" >&9; rm -f "$sheepdog_log"',
            "  printf 'sheepdog: set-up line %s %s with status %s: %s\\n' \"$sheepdog_number\" \"$1\" \"$2\" "
            '"$sheepdog_text" >&9',
            "}",
            f"trap 'sheepdog_failed \"ended the shell\" $?; exit {EXIT_SETUP_FAILED}' EXIT",
            "sheepdog_line() {",
            "  sheepdog_number=$1 sheepdog_text=$2",
            '  eval "$2" >"$sheepdog_log" 2>&1',
            "  sheepdog_status=$?",
            '  if [ "$sheepdog_status" -ne 0 ]; then',
            '    trap - EXIT; sheepdog_failed failed "$sheepdog_status"',
            f"    exit {EXIT_SETUP_FAILED}",
            "  fi",
            '  cat "$sheepdog_log"',
            "}",
        ]
        lines += [f"sheepdog_line {number} {shlex.quote(line)}" for number, line in enumerate(spec.setup, 1)]
        lines += ["trap - EXIT", 'rm -f "$sheepdog_log"', "exec 9>&-"]
    lines.append(f"exec {shlex.quote(spec.python)} -m sheepdog_drmaa.worker")
    return "\n".join(lines) + "\n"


def log_paths(spec: WorkerSpec, worker_id: str) -> dict[str, str]:
    """Where a worker's stdout and stderr go; the same naming for every backend.

    The DRMAA backend submits with the scheduler's placeholders in place of ``worker_id``
    ('$JOB_ID.$TASK_ID' on Grid Engine, '%A_%a' on Slurm), which become the worker's id.
    """
    stem = os.path.join(spec.log_dir, f"{spec.job_name}.{worker_id}")
    return {"stdout": stem + ".out", "stderr": stem + ".err"}


def open_backend(name: str, local_slots: int | None = None, outage_wait: float = 120.0) -> Backend:
    """The backend called ``name``; "auto" is DRMAA when its library loads, else local.

    ``local_slots``: how many local workers run at once (default: one per CPU); a sweep with
    ``workers=N`` on the local backend runs N. ``outage_wait``: how long DRMAA waits for a scheduler
    that cannot be reached (to open its session; at the end, to remove what is left).
    """
    if name not in BACKEND_NAMES:
        raise ConfigurationError(f"backend={name!r} is not one of {', '.join(BACKEND_NAMES)}")
    if name == "local":
        from .local import LocalBackend
        return LocalBackend(local_slots)
    from .drmaa import DrmaaBackend
    try:
        return DrmaaBackend(outage_wait)
    except SchedulerOutage:
        raise  # a cluster whose scheduler is down: its tasks must not run on this host instead
    except BackendUnavailable as error:
        if name == "drmaa":
            raise
        log.warning("DRMAA is not usable here, running workers as local processes instead: %s", error)
        from .local import LocalBackend
        return LocalBackend(local_slots)
