"""The progress display: a tqdm bar on stderr with done, failed, running and queued counts."""
from __future__ import annotations

import sys
from typing import Dict, Optional


class Progress:
    """Shows counts while a sweep runs; does nothing when disabled."""

    def __init__(self, total: int, enabled: Optional[bool], description: str) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=description, file=sys.stderr, unit="task", dynamic_ncols=True)
        self.last: Dict[str, int] = {}

    def update(self, counts: Dict[str, int]) -> None:
        if self.bar is None or counts == self.last:
            return
        finished = counts["done"] + counts["failed"]
        self.bar.update(finished - self.bar.n)
        self.bar.set_postfix(counts, refresh=True)
        self.last = dict(counts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
