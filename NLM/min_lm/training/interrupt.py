"""Ctrl-C and SIGTERM (a scheduler's "time is up") end training cleanly instead of losing work.

Inside `stop_requests()` those signals only set a flag; the training loop reads it after each
iteration, saves a checkpoint and returns. Repeated signals change nothing (under torchrun a Ctrl-C
reaches each worker twice: from the terminal and forwarded by torchrun). The previous handlers are
restored on exit, so library callers get their own behaviour back.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the signal handler; read by the training loop."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Route SIGINT/SIGTERM to a StopRequest for the duration of the block (main thread only:
    Python delivers signals there, so elsewhere the default behaviour stays)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop._handle) for s in _SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
