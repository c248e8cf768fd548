"""Training-loss bookkeeping between two log points: the loop adds to it every micro-batch
without a host sync on an accelerator, and :meth:`LossWindow.flush` reads it back."""

from __future__ import annotations

import math
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
    """Losses and skip flags since the last flush.

    Adding costs no kernel launch: losses are kept as detached tensors and summed at
    :meth:`flush`. A micro-batch's non-finite flag is a device tensor on an accelerator (so the
    loop never waits for the device) and a plain bool on the CPU, where reading a scalar stalls
    nothing and is cheaper than the tensor ops that would compute the flag on the device.
    """

    def __init__(self, device: torch.device) -> None:
        self.host_flags = device.type == "cpu"
        self.device = device
        self.losses: list[torch.Tensor] = []
        self.step_flags: list[bool | torch.Tensor] = []
        self.batches = 0
        self.empty = 0  # micro-batches whose rows were all skipped: no loss to average
        self.started = time.perf_counter()

    def no_flag(self) -> bool | torch.Tensor:
        """The flag of a step with nothing non-finite in it."""
        return False if self.host_flags else torch.zeros((), dtype=torch.bool, device=self.device)

    def add_loss(self, loss: torch.Tensor) -> bool | torch.Tensor:
        """Keep one micro-batch's detached loss; return its non-finite flag (combine with ``|``)."""
        self.losses.append(loss)
        self.batches += 1
        if self.host_flags:
            return not math.isfinite(loss.item())
        return torch.logical_not(torch.isfinite(loss))

    def add_empty(self) -> None:
        self.batches += 1
        self.empty += 1

    def add_step(self, bad: bool | torch.Tensor) -> None:
        """Count an optimizer step, skipped when ``bad`` is set."""
        self.step_flags.append(bad)

    def flush(self) -> WindowSummary | None:
        """Read the window back (the host sync) and start a new one; None when nothing was added."""
        if self.batches == 0:
            return None
        loss_sum, bad = 0.0, 0
        if self.losses:
            losses = torch.stack(self.losses).float()
            finite = torch.isfinite(losses)
            loss_sum = float(torch.where(finite, losses, torch.zeros_like(losses)).sum())
            bad = int(finite.numel() - finite.sum())
        nonfinite_steps = 0
        if self.step_flags:
            nonfinite_steps = int(torch.stack([torch.as_tensor(f, device=self.device) for f in self.step_flags]).sum())
        summary = WindowSummary(
            batches=self.batches,
            good=self.batches - self.empty - bad,
            loss_sum=loss_sum,
            nonfinite_steps=nonfinite_steps,
            seconds=max(time.perf_counter() - self.started, 1e-9),
        )
        self.losses, self.step_flags = [], []
        self.batches = self.empty = 0
        self.started = time.perf_counter()
        return summary
