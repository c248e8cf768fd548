"""Staged fine-tuning: unfreeze encoders at an epoch or step and add them to the SAME optimizer.

The new parameters join as extra parameter groups (``optimizer.add_param_group``), so the state
of the groups already training (Adam moments, step counts) is kept. On resume the stages applied
before the checkpoint are re-applied in the same order before the optimizer state is loaded, so
the group layout matches.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.engine.config import OptimizerConfig, StageConfig
from mmfuse.optim import param_groups
from mmfuse.recipe import Recipe

__all__ = ["check_stages", "stage_is_due", "apply_stage"]


def check_stages(stages: list[StageConfig], model: nn.Module) -> None:
    """Raise ValueError naming a stage that unfreezes an encoder the model lacks."""
    names = list(model.encoders)  # type: ignore[attr-defined]
    for index, stage in enumerate(stages):
        for name in stage.unfreeze:
            if name not in names:
                raise ValueError(
                    f"trainer.stages.{index}.unfreeze names encoder '{name}', but the model's encoders are {names}"
                )


def stage_is_due(stage: StageConfig, epoch: int, step: int) -> bool:
    """Whether the stage applies before the next optimizer step, taken after ``step`` steps in
    epoch ``epoch`` (0-based): ``at_step: N`` before step N+1, ``at_epoch: E`` before the first
    step of epoch E."""
    if stage.at_step is not None:
        return step >= stage.at_step
    return epoch >= (stage.at_epoch or 0)


def apply_stage(
    model: nn.Module, groups_from: Recipe | OptimizerConfig, optimizer: torch.optim.Optimizer, stage: StageConfig, index: int
) -> int:
    """Unfreeze the stage's encoders (all of each, or its last ``trainable_layers`` layer groups)
    and add their new parameters to ``optimizer``; return how many parameters joined.
    ``groups_from`` gives the groups' weight decay (see :func:`mmfuse.optim.param_groups`)."""
    for name in stage.unfreeze:
        encoder = model.encoders[name]  # type: ignore[index]
        blocks = [encoder]
        if stage.trainable_layers is not None:
            groups = encoder.layer_groups() if hasattr(encoder, "layer_groups") else [encoder]
            blocks = groups[-stage.trainable_layers :] if stage.trainable_layers else []
        for block in blocks:
            # only ever switch gradients on: parameters already training stay in their groups
            block.requires_grad_(True)
    if model.training:
        model.train()  # blocks that just thawed leave the eval mode frozen blocks are kept in
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    added = 0
    for group in param_groups(model, groups_from, only=[f"encoders.{n}" for n in stage.unfreeze], lr=stage.lr, exclude=in_optimizer):
        group["name"] = f"{group['name']}@stage{index}"
        group["initial_lr"] = group["lr"]
        optimizer.add_param_group(group)
        added += len(group["params"])
    return added
