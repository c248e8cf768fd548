"""SIGTERM / SIGINT turn into a flag that the training loop reads at each step boundary.

A scheduler (SLURM, Kubernetes, torchrun) sends SIGTERM before killing a job; the engine then
checkpoints at the next step boundary (or aborts a running evaluation) and returns cleanly. A
second SIGINT (Ctrl-C twice) interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """Installs flag-setting handlers for SIGTERM and SIGINT while a fit runs."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.active = False  # between install and restore: while a fit runs
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self.active = True
        # signal handlers can only be installed from the main thread (not when embedded in a worker thread)
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if number == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        self.active = False
