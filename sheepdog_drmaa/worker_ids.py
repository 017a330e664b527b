"""Where each scheduler tells a job its own id, and how a worker reads its id from there.

A worker's id is the one DRMAA gave the client for it, so that the server knows which worker
holds which task. The scheduler classes of :mod:`.backends.schedulers` inherit these, each owning
its variables; the worker imports only this module, not the backends. Standard library and
protocol only.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from .protocol import ENV_WORKER_ID


class WorkerIds:
    """A plain DRMAA job, or a local worker: the backend names it in SHEEPDOG_WORKER_ID."""

    variables: ClassVar[tuple[str, ...]] = (ENV_WORKER_ID,)
    separator: ClassVar[str] = ""  # between the array job's id and the task index in a worker id

    def worker_id(self, environ: Mapping[str, str]) -> str | None:
        """This job's worker id, or None when ``environ`` does not hold this scheduler's variables."""
        return environ.get(self.variables[0]) or None


class GridEngineIds(WorkerIds):
    """The array job's id and the task's index ('undefined' outside an array): '49.3'."""

    variables = ("JOB_ID", "SGE_TASK_ID")
    separator = "."

    def worker_id(self, environ: Mapping[str, str]) -> str | None:
        job_name, task_name = self.variables
        job, task = environ.get(job_name, ""), environ.get(task_name, "undefined")
        if not job:
            return None
        return job if task in ("", "undefined") else f"{job}{self.separator}{task}"


class SlurmIds(WorkerIds):
    """The array job's id and the task's index: '238_4' (the task's own SLURM_JOB_ID is another number)."""

    variables = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
    separator = "_"

    def worker_id(self, environ: Mapping[str, str]) -> str | None:
        job, task = (environ.get(name, "") for name in self.variables)
        return f"{job}{self.separator}{task}" if job and task else None


# Slurm before Grid Engine: Slurm copies the submitting shell's environment into the job, and with
# it any JOB_ID that shell had; Grid Engine's DRMAA jobs get only the variables they are given.
_ASKED_IN_TURN = (WorkerIds(), SlurmIds(), GridEngineIds())


def worker_id_from_environment(environ: Mapping[str, str] = os.environ) -> str:
    """The scheduler's id of this worker, as DRMAA gave it to the client; KeyError when none is set."""
    for ids in _ASKED_IN_TURN:
        found = ids.worker_id(environ)
        if found:
            return found
    names = [ids.variables[0] for ids in _ASKED_IN_TURN]
    raise KeyError(f"none of {', '.join(names[:-1])} and {names[-1]} is set")
