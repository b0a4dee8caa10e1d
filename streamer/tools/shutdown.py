"""Turn SIGINT and SIGTERM into a flag that long-running tool loops poll."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopSignal:
    """Set by SIGINT/SIGTERM (or by code); loops check ``is_set`` and wind down cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str | None = None) -> None:
        self.signal_name = self.signal_name or reason
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@contextmanager
def stop_on_signals(stop: StopSignal | None = None) -> Iterator[StopSignal]:
    """Within the block, SIGINT and SIGTERM set the returned flag instead of killing us.

    A second SIGINT restores the default behaviour (KeyboardInterrupt), so an operator can
    always get out of a stuck shutdown.
    """
    stop = stop or StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
