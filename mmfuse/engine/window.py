"""Training-loss bookkeeping between two log points, kept on the device: the loop adds to it
every micro-batch without a host sync, and :meth:`LossWindow.flush` reads it back."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["LossWindow", "WindowSummary"]


@dataclass
class WindowSummary:
    """What a flushed window held: ``good`` micro-batches (finite loss, not empty) summed to ``loss_sum``."""

    batches: int
    good: int
    loss_sum: float
    nonfinite_steps: int
    seconds: float

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.good if self.good else float("nan")


class LossWindow:
    """Device-side sums since the last flush."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.bad = torch.zeros((), device=device)  # non-finite micro-batches
        self.nonfinite_steps = torch.zeros((), device=device)
        self.batches = 0
        self.empty = 0  # micro-batches whose rows were all skipped: no loss to average
        self.started = time.perf_counter()

    def add_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Count one micro-batch's detached loss; return its non-finite flag (a device tensor)."""
        loss = loss.float()
        bad = torch.logical_not(torch.isfinite(loss)).float()
        self.loss += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
        self.bad += bad
        self.batches += 1
        return bad

    def add_empty(self) -> None:
        self.batches += 1
        self.empty += 1

    def add_step(self, bad: torch.Tensor) -> None:
        """Count an optimizer step, skipped when ``bad`` (a device flag) is set."""
        self.nonfinite_steps += bad

    def flush(self) -> WindowSummary | None:
        """Read the sums back (the host sync) and start a new window; None when nothing was added."""
        if self.batches == 0:
            return None
        summary = WindowSummary(
            batches=self.batches,
            good=self.batches - self.empty - int(self.bad.item()),
            loss_sum=float(self.loss.item()),
            nonfinite_steps=int(self.nonfinite_steps.item()),
            seconds=max(time.perf_counter() - self.started, 1e-9),
        )
        self.loss.zero_()
        self.bad.zero_()
        self.nonfinite_steps.zero_()
        self.batches = self.empty = 0
        self.started = time.perf_counter()
        return summary
