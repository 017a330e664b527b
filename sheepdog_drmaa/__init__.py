"""Map a Python function over argument tuples on a Grid Engine cluster, with retries and a durable record.

The public names load on first use, so that a worker, which imports this package to reach
``sheepdog_drmaa.worker``, does not pay for the server, the store or the scheduler bindings.
"""
import importlib
from typing import Any

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "map": "api", "map_async": "api", "Sweep": "handle", "TaskFailure": "records",
    "SheepdogError": "errors", "ConfigurationError": "errors", "BackendUnavailable": "errors",
    "WorkersCannotStart": "errors", "SweepFailed": "errors", "SweepLocked": "errors",
    "SweepMismatch": "errors", "SweepIncomplete": "errors", "StoreError": "errors",
    "ResultTooLarge": "errors", "SweepCancelled": "errors", "SubmissionRefused": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
