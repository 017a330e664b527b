"""Schedulers that run workers: one small interface, a DRMAA and a local implementation."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from ..errors import BackendUnavailable, ConfigurationError
from ..failures import ExitInfo

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "drmaa", "local")


@dataclass(frozen=True)
class WorkerSpec:
    """How to start workers: the same for every worker of one submission."""

    python: str
    environment: Dict[str, str]
    working_directory: str
    log_dir: str
    job_name: str
    queue: Optional[str] = None
    native_spec: Optional[str] = None


# A worker an earlier client started: (id, host it said hello from, its process group there).
Leftover = Tuple[str, Optional[str], Optional[int]]


class Backend(Protocol):
    """What the runner needs from a scheduler. All calls come from one thread."""

    name: str
    max_array_size: int

    def submit(self, count: int, spec: WorkerSpec) -> List[str]:
        """Start ``count`` workers as one bulk submission; return their ids."""

    def wait_any(self, timeout: float) -> Optional[ExitInfo]:
        """The exit information of one finished worker, or None after ``timeout`` seconds."""

    def terminate(self, worker_ids: Sequence[str]) -> None:
        """Remove these workers, queued or running; unknown or finished ids are ignored."""

    def terminate_leftovers(self, leftovers: Sequence[Leftover]) -> None:
        """Remove workers that an earlier, dead client of the same sweep started."""

    def close(self) -> None:
        """Release the scheduler session."""


def worker_command(spec: WorkerSpec) -> List[str]:
    return [spec.python, "-m", "sheepdog_drmaa.worker"]


def log_paths(spec: WorkerSpec, worker_id: str) -> Dict[str, str]:
    """Where a worker's stdout and stderr go; the same naming for every backend."""
    stem = os.path.join(spec.log_dir, f"{spec.job_name}.{worker_id}")
    return {"stdout": stem + ".out", "stderr": stem + ".err"}


def open_backend(name: str) -> Backend:
    """The backend called ``name``; "auto" is DRMAA when its library loads, else local."""
    if name not in BACKEND_NAMES:
        raise ConfigurationError(f"backend={name!r} is not one of {', '.join(BACKEND_NAMES)}")
    if name == "local":
        from .local import LocalBackend
        return LocalBackend()
    from .drmaa import DrmaaBackend
    try:
        return DrmaaBackend()
    except BackendUnavailable as error:
        if name == "drmaa":
            raise
        log.warning("Grid Engine is not usable here, running workers as local processes instead: %s", error)
        from .local import LocalBackend
        return LocalBackend()
