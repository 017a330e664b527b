"""Schedulers that run workers: one small interface, a DRMAA and a local implementation."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from ..errors import BackendUnavailable, ConfigurationError
from ..failures import ExitInfo

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


# A worker an earlier client started: (id, host it said hello from, its process group there).
Leftover = tuple[str, Optional[str], Optional[int]]


class Backend(Protocol):
    """What the runner needs from a scheduler. All calls come from one thread."""

    name: str
    max_array_size: int

    def submit(self, count: int, spec: WorkerSpec) -> list[str]:
        """Start ``count`` workers as one bulk submission; return their ids."""

    def check_request(self, spec: WorkerSpec) -> None:
        """Raise ConfigurationError for a request this scheduler would refuse, before anything is
        stored or submitted."""

    def running_hosts(self) -> dict[str, str | None]:
        """Workers the scheduler shows started (running, or being sent to their host), each with the
        host it was sent to where known. Cheap: answered from what the backend last listed."""

    def wait_any(self, timeout: float) -> ExitInfo | None:
        """The exit information of one finished worker, or None after ``timeout`` seconds."""

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """Remove these workers, queued or running; unknown or finished ids are ignored."""

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Remove workers that an earlier, dead client of the same sweep started."""

    def close(self) -> None:
        """Release the scheduler session."""


def worker_command(spec: WorkerSpec) -> list[str]:
    return [spec.python, "-m", "sheepdog_drmaa.worker"]


def log_paths(spec: WorkerSpec, worker_id: str) -> dict[str, str]:
    """Where a worker's stdout and stderr go; the same naming for every backend.

    The DRMAA backend submits with the scheduler's placeholders in place of ``worker_id``
    ('$JOB_ID.$TASK_ID' on Grid Engine, '%A_%a' on Slurm), which become the worker's id.
    """
    stem = os.path.join(spec.log_dir, f"{spec.job_name}.{worker_id}")
    return {"stdout": stem + ".out", "stderr": stem + ".err"}


def open_backend(name: str, local_slots: int | None = None) -> Backend:
    """The backend called ``name``; "auto" is DRMAA when its library loads, else local.

    ``local_slots``: how many local workers run at once (default: one per CPU); a sweep with
    ``workers=N`` on the local backend runs N.
    """
    if name not in BACKEND_NAMES:
        raise ConfigurationError(f"backend={name!r} is not one of {', '.join(BACKEND_NAMES)}")
    if name == "local":
        from .local import LocalBackend
        return LocalBackend(local_slots)
    from .drmaa import DrmaaBackend
    try:
        return DrmaaBackend()
    except BackendUnavailable as error:
        if name == "drmaa":
            raise
        log.warning("DRMAA is not usable here, running workers as local processes instead: %s", error)
        from .local import LocalBackend
        return LocalBackend(local_slots)
