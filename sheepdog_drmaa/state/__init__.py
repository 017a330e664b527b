"""The pure core of a sweep: tasks, workers, start health and batch sizes; events in, decisions out.

Nothing here does I/O, reads a clock or starts a thread: its callers pass the time in. Imports
only :mod:`sheepdog_drmaa.model` and :mod:`sheepdog_drmaa.failures`.
"""
from .health import StartFailure
from .sweep import Overdue, SweepState, Tick
from .workers import IllegalTransition, Worker, WorkerPhase

__all__ = ["IllegalTransition", "Overdue", "StartFailure", "SweepState", "Tick", "Worker", "WorkerPhase"]
