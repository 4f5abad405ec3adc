"""`Prefetcher`: a background thread that makes the next block of a deterministic sequence
while the caller uses the current one. Torch releases the GIL inside its ops, so a model
forward pass (or a cache read) there overlaps the SAE steps here.

Blocks are made strictly in order, one at a time, and only on request: at most two exist
at once (the one in use and the one being made), which bounds the buffer's memory. An
exception in the thread is raised again in the caller by `next()`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class Prefetcher(Generic[T]):
    """`next()` returns `make(0)`, `make(1)`, ... in order; `make(i + 1)` runs in the
    background while the caller holds block i (with `background=False`, in the caller)."""

    def __init__(self, make: Callable[[int], T], first: int = 0, background: bool = True):
        self._make = make
        self._index = first
        self._background = background
        self._requests: queue.Queue[Any] = queue.Queue()
        self._results: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="sae-fast-data")
            self._thread.start()
            self._requests.put(self._index)

    def _loop(self) -> None:
        while True:
            i = self._requests.get()
            if i is _STOP:
                return
            try:
                self._results.put((True, self._make(i)))
            except BaseException as err:
                self._results.put((False, err))
                return

    def next(self) -> T:
        """The next block (waits for the producer if it is not ready yet)."""
        i = self._index
        self._index += 1
        if not self._background:
            return self._make(i)
        ok, value = self._results.get()
        if not ok:
            self.close()
            raise value
        self._requests.put(self._index)  # make the one after while the caller uses this
        return value

    def close(self) -> None:
        """Stop the thread (after the block it is making, if any)."""
        if self._thread is not None:
            self._requests.put(_STOP)
            self._thread.join()
            self._thread = None
