"""Map a Python function over argument tuples on a Grid Engine cluster, with retries and a durable record."""
from .api import map, map_async
from .errors import (BackendUnavailable, ConfigurationError, SheepdogError, SweepCancelled, SweepFailed,
                     SweepLocked, SweepMismatch, WorkersCannotStart)
from .handle import Sweep
from .records import TaskFailure

__version__ = "0.1.0"

__all__ = ["map", "map_async", "Sweep", "TaskFailure", "SheepdogError", "ConfigurationError", "BackendUnavailable",
           "WorkersCannotStart", "SweepFailed", "SweepLocked", "SweepMismatch", "SweepCancelled", "__version__"]
