"""Stop requests: Ctrl-C and SIGTERM end a training run after its current
iteration, with a checkpoint, instead of killing the process."""
from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals"]


class StopSignals:
    """Ctrl-C and SIGTERM set a flag instead of killing the process, so the loop
    can checkpoint and return. A second Ctrl-C raises KeyboardInterrupt.
    Installs nothing outside the main thread."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
