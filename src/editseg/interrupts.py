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
        self._installed = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.second_raises:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            # None: the previous handler was not installed from Python and cannot be put back;
            # Python's own Ctrl-C handler then keeps Ctrl-C working instead of ours staying behind
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed, self._previous = False, None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C came while active."""
        if self.requested:
            raise KeyboardInterrupt
