"""What a worker runs for an Executor's task: the call ``fn(*args, **kwargs)`` it carries.

An Executor's sweep has this module's :func:`call` as its function, and each task's argument is
``(pickled fn, args, kwargs)``, so that each submission may call a different function. Imported
on the execution nodes: the standard library and cloudpickle only.
"""
from __future__ import annotations

from typing import Any, Callable

import cloudpickle

_LOADED: dict[bytes, Callable[..., Any]] = {}  # a worker loads each function once, however many calls
_LOADED_LIMIT = 64


def call(function: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Load the pickled function (once per worker) and call it."""
    fn = _LOADED.get(function)
    if fn is None:
        fn = cloudpickle.loads(function)
        if len(_LOADED) >= _LOADED_LIMIT:
            _LOADED.clear()
        _LOADED[function] = fn
    return fn(*args, **kwargs)
