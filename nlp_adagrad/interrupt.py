"""Ctrl-C and SIGTERM during training: finish the step in hand, then stop cleanly.

`stop_requests()` turns the first SIGINT or SIGTERM into a flag the loop reads after each
step (it then saves a checkpoint and exits 130 with the command that resumes); a second one
acts at once, as the default would. Handlers are installed only in the main thread of a
single process: under torchrun the ranks would reach the flag at different steps, and one
rank stopping alone would leave the others waiting in a collective.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    requested: bool = False
    signal_name: str = ""


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handle(signum, frame) -> None:
        request.requested, request.signal_name = True, signal.Signals(signum).name
        for s, handler in previous.items():  # a second signal is not deferred
            signal.signal(s, handler)

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
