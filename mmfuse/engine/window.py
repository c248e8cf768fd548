"""Training-loss bookkeeping between two log points: the loop adds to it every micro-batch
without a host sync on an accelerator, and :meth:`LossWindow.flush` reads it back and sums it
over ranks (one small all-reduce), so what is logged is every rank's."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mmfuse.engine.distributed import DistributedContext, all_reduce_sum

__all__ = ["LossWindow", "WindowSummary"]


@dataclass
class WindowSummary:
    """What a flushed window held, summed over ranks: ``good`` micro-batches (finite loss, not
    empty) summed to ``loss_sum``; rows the data pipeline ``skipped``; one-row batches
    ``dropped``. ``nonfinite_steps`` and ``seconds`` are this rank's (the ranks skip together)."""

    batches: int
    good: int
    loss_sum: float
    nonfinite_steps: int
    seconds: float
    skipped: int = 0
    dropped: int = 0

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
        self.skipped = 0  # rows the data pipeline skipped
        self.dropped = 0  # one-row batches set aside (BatchNorm)
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

    def flush(self, context: DistributedContext) -> WindowSummary | None:
        """Read the window back (the host sync), sum it over ranks (a collective: every rank
        calls it at the same points) and start a new one; None when no rank added anything."""
        loss_sum, bad = 0.0, 0
        if self.losses:
            losses = torch.stack(self.losses).float()
            finite = torch.isfinite(losses)
            loss_sum = float(torch.where(finite, losses, torch.zeros_like(losses)).sum())
            bad = int(finite.numel() - finite.sum())
        nonfinite_steps = 0
        if self.step_flags:
            nonfinite_steps = int(torch.stack([torch.as_tensor(f, device=self.device) for f in self.step_flags]).sum())
        good = self.batches - self.empty - bad
        totals = torch.tensor([self.batches, good, loss_sum, self.skipped, self.dropped], dtype=torch.float64, device=self.device)
        batches, good, loss_sum, skipped, dropped = all_reduce_sum(totals, context).tolist()
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.losses, self.step_flags = [], []
        self.batches = self.empty = self.skipped = self.dropped = 0
        self.started = time.perf_counter()
        if not batches and not skipped:
            return None
        return WindowSummary(int(batches), int(good), loss_sum, nonfinite_steps, seconds, int(skipped), int(dropped))
