"""Ctrl-C (SIGINT) held back until a safe point, written once for every writer.

A ``KeyboardInterrupt`` that lands in the middle of writing leaves half a result behind (or, raised
inside a finaliser or callback, is swallowed by Python and the run carries on). :class:`DeferredInterrupt`
replaces the SIGINT handler while active: a Ctrl-C only marks the block (:attr:`~DeferredInterrupt.requested`),
and :meth:`~DeferredInterrupt.check` raises it where stopping is safe. Only the main thread can
install a signal handler; elsewhere the block runs with the handler it has.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class DeferredInterrupt:
    """While active, SIGINT marks :attr:`requested` instead of raising; :meth:`check` raises it.

    ``second_raises``: a second Ctrl-C raises at once (an escape hatch for long runs); with False
    every Ctrl-C waits (for short blocks that must not be cut, e.g. renames that all belong
    together). The previous handler comes back on exit; exiting does not raise by itself."""

    def __init__(self, second_raises: bool = False) -> None:
        self.second_raises = second_raises
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.second_raises:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C came while active."""
        if self.requested:
            raise KeyboardInterrupt
