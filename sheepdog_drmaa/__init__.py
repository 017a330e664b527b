"""Map a Python function over argument tuples on a Grid Engine cluster, with retries and a durable record.

The public names load on first use, so that a worker, which imports this package to reach
``sheepdog_drmaa.worker``, does not pay for the server, the store or the scheduler bindings.
"""
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, typed for checkers; at run time they load on first use
    from .api import map as map
    from .api import map_async as map_async
    from .errors import BackendUnavailable as BackendUnavailable
    from .errors import ConfigurationError as ConfigurationError
    from .errors import DriverFailed as DriverFailed
    from .errors import ResultTooLarge as ResultTooLarge
    from .errors import SheepdogError as SheepdogError
    from .errors import StoreError as StoreError
    from .errors import SubmissionRefused as SubmissionRefused
    from .errors import SweepCancelled as SweepCancelled
    from .errors import SweepFailed as SweepFailed
    from .errors import SweepIncomplete as SweepIncomplete
    from .errors import SweepLocked as SweepLocked
    from .errors import SweepMismatch as SweepMismatch
    from .errors import TaskFailed as TaskFailed
    from .errors import WorkersCannotStart as WorkersCannotStart
    from .executor import Executor as Executor
    from .handle import Sweep as Sweep
    from .records import TaskFailure as TaskFailure

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "map": "api", "map_async": "api", "Sweep": "handle", "TaskFailure": "records",
    "SheepdogError": "errors", "ConfigurationError": "errors", "BackendUnavailable": "errors",
    "WorkersCannotStart": "errors", "SweepFailed": "errors", "SweepLocked": "errors",
    "SweepMismatch": "errors", "SweepIncomplete": "errors", "StoreError": "errors",
    "ResultTooLarge": "errors", "SweepCancelled": "errors", "SubmissionRefused": "errors", "DriverFailed": "errors",
    "TaskFailed": "errors", "Executor": "executor",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
