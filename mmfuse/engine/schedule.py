"""Learning-rate schedules with linear warmup, stepped once per optimizer step.

Every parameter group carries ``initial_lr`` (its own base lr); the schedule multiplies it by one
factor that depends only on the number of optimizer steps taken. Groups added later with
``optimizer.add_param_group`` (staged unfreezing) follow the same curve from the step they join,
which ``torch.optim.lr_scheduler.LambdaLR`` cannot do (it fixes the group count at construction).

Curves, with ``w`` warmup steps, ``T`` total steps and ``p = (step - w) / (T - w)`` in ``[0, 1]``:

- warmup (``step < w``): ``(step + 1) / w``
- constant: 1
- linear: ``m + (1 - m) * (1 - p)``; cosine: ``m + (1 - m) * (1 + cos(pi p)) / 2`` (``m`` = min_lr_ratio)
- exponential: ``gamma ** (step - w)``; step: ``gamma ** ((step - w) // step_size)``
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mmfuse.engine.config import SchedulerConfig

__all__ = ["lr_factor", "warmup_steps_of", "LRSchedule"]


def warmup_steps_of(config: SchedulerConfig, total_steps: int) -> int:
    """Warmup length in optimizer steps: ``warmup_steps`` or ``warmup_ratio`` of all steps."""
    if config.warmup_steps:
        return config.warmup_steps
    return int(round(config.warmup_ratio * total_steps))


def lr_factor(config: SchedulerConfig, step: int, total_steps: int) -> float:
    """Multiplier of each group's base lr for the optimizer step numbered ``step`` (0-based)."""
    warmup = warmup_steps_of(config, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    after = step - warmup
    if config.name == "constant":
        return 1.0
    if config.name == "exponential":
        return config.gamma**after
    if config.name == "step":
        return config.gamma ** (after // config.step_size)
    progress = min(1.0, after / max(1, total_steps - warmup))
    floor = config.min_lr_ratio
    if config.name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if config.name == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {config.name!r}; one of constant, linear, exponential, cosine, step")


class LRSchedule:
    """Sets every group's lr for the next optimizer step; state is the step count only."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: SchedulerConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.config = config
        self.total_steps = max(1, total_steps)
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.apply()

    def apply(self) -> None:
        """Write the lr of the current step into every group (also groups added since)."""
        factor = lr_factor(self.config, self.step_count, self.total_steps)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def current_lr(self) -> float:
        """The lr of the first parameter group (what the logs show as ``lr``)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.total_steps = int(state["total_steps"])
        self.apply()
