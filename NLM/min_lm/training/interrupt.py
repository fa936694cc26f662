"""Ctrl-C and SIGTERM (a scheduler's "time is up") end training cleanly instead of losing work.

Inside `stop_requests()` those signals only set a flag; the training loop reads it after each
iteration, saves a checkpoint and returns. Repeated signals change nothing (under torchrun a Ctrl-C
reaches each worker twice: from the terminal and forwarded by torchrun; an impatient user presses it
again while the checkpoint is being written). So the handlers must stay in place until the final save,
plot and metrics are done: the trainer keeps the whole run, not only the loop, inside the block.

Blocks nest: an inner `stop_requests()` shares the StopRequest of the outer one. The command line uses
that to own the signals for the rest of the process once a stop was asked for (`then_ignore=True`): a
signal that arrives after training returned, while the process is exiting, must not turn a saved run into
a traceback or a death by signal. (Ignored, not routed: Python puts its own handlers back to the default
while it shuts down.) Library callers get their own handlers back on exit.
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
        self.signal_name = self.signal_name or signal.Signals(signum).name  # the first one says why


@contextlib.contextmanager
def stop_requests(then_ignore: bool = False) -> Iterator[StopRequest]:
    """Route SIGINT/SIGTERM to a StopRequest for the duration of the block (main thread only:
    Python delivers signals there, so elsewhere the default behaviour stays).

    With `then_ignore`, once a stop was requested the signals are ignored after the block instead of
    restored (the process is ending: the user asked it to). Without a request they are restored, so a
    program that calls a command's `main()` and goes on (a test suite, a notebook) keeps its handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    outer = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    if isinstance(outer, StopRequest):  # already routed by an enclosing block: share its flag
        yield outer
        return
    stop = StopRequest()
    previous = {s: signal.signal(s, stop._handle) for s in _SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            if then_ignore and stop.requested:
                handler = signal.SIG_IGN
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
