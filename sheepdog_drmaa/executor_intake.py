"""The queue between ``Executor.submit`` and the sweep: submit only appends; one thread takes what
was queued, the calls submitted close together in one batch, and hands them on."""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

# After the first call of a batch, how long more are waited for, and the most taken at once.
COALESCE_SECONDS = 0.005
MOST_PER_BATCH = 5000


class Call(NamedTuple):
    """One submitted call and the future that gets its outcome."""

    future: concurrent.futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Intake:
    """Calls queued by ``put``, handed to ``take_batch`` in batches from a thread of its own."""

    def __init__(self, take_batch: Callable[[list[Call]], None], thread_name: str) -> None:
        self.take_batch = take_batch
        self.queue: collections.deque[Call] = collections.deque()
        self.arrived = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()

    def put(self, call: Call) -> None:
        with self.arrived:
            self.queue.append(call)
            if len(self.queue) == 1:
                self.arrived.notify()

    def close(self, cancel: bool = False) -> None:
        """Hand on what is queued (or, with ``cancel``, cancel it), then stop."""
        with self.arrived:
            self.closed = True
            if cancel:
                while self.queue:
                    self.queue.popleft().future.cancel()
            self.arrived.notify()
        self.thread.join()

    def _run(self) -> None:
        while True:
            with self.arrived:
                while not self.queue and not self.closed:
                    self.arrived.wait()
                if not self.queue:
                    return
            time.sleep(COALESCE_SECONDS)  # let a burst of submissions gather
            with self.arrived:
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), MOST_PER_BATCH))]
            try:
                self.take_batch(batch)
            except BaseException as error:  # never leave a future unsettled: each gets the error
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(error)
