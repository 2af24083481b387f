"""Python callbacks handed to Arrow's streaming CSV reader, released before the interpreter
shuts down.

Arrow's streaming reader keeps the callback for misshapen rows (``invalid_row_handler``)
for as long as the reader lives, and a reader abandoned early — a replay refused at its
first block — can be kept alive a little longer by a read-ahead thread of Arrow's own.
When that thread drops the last reference while Python is finalising, releasing the
callback needs the interpreter lock, which a non-Python thread can no longer take then:
the thread is ended by unwinding through C++ code that may not be unwound, and the
process aborts (``terminate called without an active exception``, exit 134 instead of
the command's own exit code).

:func:`tracked` wraps a callback so that its release is seen; at exit, before
finalisation starts, the process waits (up to :data:`WAIT_S`) until every wrapped
callback has been released — by then the read-ahead threads are done with them.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any

#: The longest the process waits at exit for Arrow to release a callback (an abandoned
#: reader's read-ahead finishes in milliseconds).
WAIT_S = 2.0

_live: set[threading.Event] = set()
_lock = threading.RLock()  # (a __del__ may run inside a locked block of its own thread)


class _Tracked:
    """A callback whose release (by whichever thread drops the last reference) is seen."""

    __slots__ = ("_fn", "_released")

    def __init__(self, fn: Callable[[Any], Any]):
        self._fn = fn
        self._released = threading.Event()
        with _lock:
            _live.add(self._released)

    def __call__(self, row: Any) -> Any:
        return self._fn(row)

    def __del__(self) -> None:
        self._released.set()
        with _lock:
            _live.discard(self._released)


def tracked(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn``, wrapped so that the process waits at exit until Arrow has released it."""
    return _Tracked(fn)


def outstanding() -> int:
    """How many tracked callbacks are still held (by a reader, or a read-ahead thread)."""
    with _lock:
        return len(_live)


def wait_released(timeout_s: float = WAIT_S) -> bool:
    """Wait until every tracked callback is released (True), or ``timeout_s`` passed."""
    with _lock:
        pending = list(_live)
    deadline = time.monotonic() + timeout_s
    for event in pending:
        if not event.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


atexit.register(wait_released)
