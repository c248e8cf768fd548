"""The loss of one micro-batch as a module, so that DDP wraps the forward and the loss together,
and what that module does with a batch that has no rows to learn from.

With ``data.on_bad_sample: skip`` the collate function returns a batch with no ``inputs`` when
every row of it was bad; a one-row batch is also set aside when the model trains BatchNorm layers
(they cannot normalise a single row). One process simply steps over such a batch. Under DDP that
is not possible: the other ranks' backward passes all-reduce gradients, and a rank that skipped
the backward would leave them waiting. So the rank runs the step with a zero loss connected to
every trainable parameter: its backward all-reduces zero gradients. A task whose loss runs its own
collectives (``Task.uses_collectives``, the contrastive gather) is asked for its
``empty_loss``, which joins those collectives with zero rows, so every rank calls them equally often.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mmfuse.model import FusedModel

__all__ = [
    "LossStep", "OptimizerStep", "is_empty_batch", "zero_loss", "batch_rows", "trains_batchnorm", "collective_tasks",
]


def is_empty_batch(batch: dict[str, Any]) -> bool:
    """Whether every row of the batch was skipped (the collate function left ``inputs`` empty)."""
    return not batch.get("inputs")


def batch_rows(batch: dict[str, Any]) -> int:
    """Rows in a batch (0 for an empty one), read from the first tensor of its targets, presence
    masks or inputs."""
    if is_empty_batch(batch):
        return 0
    for group in ("targets", "present"):
        for value in batch.get(group, {}).values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return int(value.shape[0])
    for tensors in batch["inputs"].values():
        for value in tensors.values():
            return int(value.shape[0])
    raise ValueError("cannot tell the batch size: the batch has no targets, presence masks or inputs")


def trains_batchnorm(model: nn.Module) -> bool:
    """Whether a BatchNorm layer with trainable or running statistics is in train mode (then a
    one-row batch fails: "Expected more than 1 value per channel when training")."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def collective_tasks(model: FusedModel) -> list[str]:
    """Names of the tasks whose loss runs torch.distributed collectives."""
    return [name for name, task in model.tasks.items() if getattr(task, "uses_collectives", False)]


def zero_loss(module: nn.Module) -> torch.Tensor:
    """``0 * sum(params)``: a zero loss whose backward gives every trainable parameter a zero gradient."""
    trainable = [parameter.sum() for parameter in module.parameters() if parameter.requires_grad]
    if not trainable:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.stack(trainable).sum() * 0.0


class LossStep(nn.Module):
    """``batch -> weighted task loss`` of a FusedModel; ``None`` as the batch means "no rows here"
    (a zero loss that still joins the tasks' collectives)."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any] | None) -> torch.Tensor:
        if batch is None or is_empty_batch(batch):
            return self.empty_loss()
        outputs = self.model(batch)
        loss, _ = self.model.compute_loss(outputs, batch.get("targets", {}))
        return loss

    def empty_loss(self) -> torch.Tensor:
        loss = zero_loss(self.model)
        for name in collective_tasks(self.model):
            loss = loss + 0.0 * self.model.tasks[name].empty_loss(loss.device)
        return loss


class OptimizerStep:
    """Unscale (fp16), a hook, clip, step (skipping a non-finite step), zero the gradients.

    On an accelerator, fused optimizers skip a step on the device when told so (``found_inf``, as
    GradScaler does), without a host sync. On the CPU reading the flag stalls nothing and is
    cheaper than the found_inf path (which rolls back every group's step counter with extra
    kernels)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_grad_norm: float | None, device: torch.device
    ) -> None:
        self.optimizer, self.scaler, self.clip_grad_norm = optimizer, scaler, clip_grad_norm
        self.device_side_skip = device.type != "cpu" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))

    def __call__(self, bad: bool | torch.Tensor, before: Callable[[], None]) -> None:
        """Step unless ``bad`` (a non-finite loss) is set; ``before`` runs after unscaling, before clipping."""
        optimizer = self.optimizer
        self.scaler.unscale_(optimizer)  # a no-op without fp16
        before()
        if self.clip_grad_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm, foreach=True)
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # GradScaler itself skips steps whose gradients are not finite
            self.scaler.update()
        elif self.device_side_skip:
            optimizer.found_inf = bad.float()  # type: ignore[attr-defined,union-attr]
            optimizer.step()
            del optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(bad):  # CPU, or no fused kernel on an accelerator (one sync there)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
