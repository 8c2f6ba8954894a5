"""Ctrl-C during training: the first SIGINT asks the training loop to stop after the step in
progress (so the checkpoint it saves is a whole step, never a torn update); a second one stops
at once. Under torchrun the default behaviour stays (ranks would stop at different steps)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ..errors import SaelabError


class Interrupted(SaelabError):
    """Training stopped on Ctrl-C after saving a checkpoint; the command line exits with 130."""


class StopRequest:
    requested = False


@contextmanager
def stop_on_interrupt(enabled: bool = True):
    """A StopRequest whose `requested` turns True on the first SIGINT while inside."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
