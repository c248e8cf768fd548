"""A callback that warns when training steps become far slower than the first ones (a busy or
oversubscribed machine, swapping, a thermal limit), naming the settings that usually help."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Callable

import torch

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["SlowStepWarning"]


class SlowStepWarning(Callback):
    """Measures the wall time between optimizer steps (evaluation and checkpoints excluded). The
    median of steps 2..1+``baseline_steps`` is the baseline (step 1 pays for warm-up); when the
    median of the last ``window`` steps exceeds ``factor`` x baseline, it warns, then again only
    after the slowdown doubles."""

    def __init__(self, factor: float = 5.0, baseline_steps: int = 5, window: int = 5,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.factor = factor
        self.baseline_steps = baseline_steps
        self.window = window
        self.clock = clock
        self._last: float | None = None
        self._seen = 0
        self._durations: list[float] = []
        self.baseline: float | None = None
        self._warn_above: float | None = None
        self.warnings: list[str] = []

    def _restart(self, *_: object) -> None:
        self._last = self.clock()

    on_fit_start = _restart

    def on_train_epoch_start(self, trainer: "Trainer") -> None:
        self._restart()

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._restart()

    def on_checkpoint(self, trainer: "Trainer", path) -> None:
        self._restart()

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        now = self.clock()
        if self._last is None:
            self._last = now
            return
        duration, self._last = now - self._last, now
        self._seen += 1
        if self._seen == 1:
            return  # the first step pays for warm-up (allocations, worker start, kernel selection)
        self._durations.append(duration)
        if self.baseline is None:
            if len(self._durations) == self.baseline_steps:
                self.baseline = statistics.median(self._durations)
                self._warn_above = self.factor * self.baseline
                self._durations.clear()
            return
        self._durations = self._durations[-self.window :]
        recent = statistics.median(self._durations)
        if len(self._durations) == self.window and recent > (self._warn_above or float("inf")):
            message = (
                f"warning: steps now take {recent:.2f} s, {recent / self.baseline:.0f}x the first ones "
                f"({self.baseline:.2f} s). The machine may be busy or oversubscribed: lower trainer.num_threads "
                f"or data.num_workers, or check what else runs (threads now: {torch.get_num_threads()})."
            )
            self.warnings.append(message)
            trainer.log(message)
            self._warn_above = 2 * recent
