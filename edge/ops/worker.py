"""A background worker for slow side work (writing evidence to disk, a shadow model): the
inspection loop hands items over and goes on; a full queue refuses the item at once (the
caller counts it), it never blocks the loop."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class Worker:
    def __init__(self, name: str, handle: Callable[[Any], None], queue_size: int) -> None:
        """`handle(item)` runs on the worker's thread, one item at a time; it handles its own errors."""
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def offer(self, item: Any) -> bool:
        """Queue `item`; False (and nothing queued) when the worker is behind by a full queue."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is handled; False on timeout."""
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Handle what is queued, then end the thread."""
        self._queue.put((_STOP, None))
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _FLUSH:
                item[1].set()
            elif isinstance(item, tuple) and len(item) == 2 and item[0] is _STOP:
                return
            else:
                self._handle(item)


_FLUSH: Any = object()
_STOP: Any = object()
