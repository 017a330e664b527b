"""The progress display: a tqdm bar on stderr with done, failed, running and queued counts.

While the bar shows, log lines (the library's warnings, the user's own logging) are written
through it, above the bar, rather than across it.
"""
from __future__ import annotations

import contextlib
import sys


class Progress:
    """Shows counts while a sweep runs; does nothing when disabled."""

    def __init__(self, total: int, enabled: bool | None, description: str) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() or in_notebook()
        self.bar = None
        self._redirect = contextlib.ExitStack()
        if enabled:
            from tqdm.auto import tqdm  # in a notebook, its widget bar
            from tqdm.contrib.logging import logging_redirect_tqdm
            self.bar = tqdm(total=total, desc=description, file=sys.stderr, unit="task", dynamic_ncols=True)
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        self.last: dict[str, int] = {}

    def update(self, counts: dict[str, int]) -> None:
        if self.bar is None or counts == self.last:
            return
        finished = counts["done"] + counts["failed"]
        self.bar.update(finished - self.bar.n)
        self.bar.set_postfix(counts, refresh=True)
        self.last = dict(counts)

    def grow(self, added: int) -> None:
        """Tasks joined the sweep (an Executor's submissions): the bar's total grows."""
        if self.bar is not None and self.bar.total is not None:
            self.bar.total += added
            self.bar.refresh()

    def close(self) -> None:
        self._redirect.close()
        if self.bar is not None:
            self.bar.close()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose stderr is no terminal, but shows a bar)."""
    return "ipykernel" in sys.modules


def announce(enabled: bool | None, text: str) -> None:
    """One line for the user on stderr, where the progress display would be (and only when it would
    be: ``progress=False`` silences it)."""
    if enabled or (enabled is None and sys.stderr.isatty()):
        print(f"sheepdog_drmaa: {text}", file=sys.stderr)
