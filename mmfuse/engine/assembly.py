"""The parts a Trainer is built from that follow from its configuration alone: the autocast
context for ``trainer.precision``, the list of callbacks (built-in, named in the recipe, given,
asked for by tasks), and which modules of the model no task reads."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from mmfuse.engine.callbacks import Callback, Checkpointing, EarlyStopping
from mmfuse.engine.config import TrainerConfig
from mmfuse.engine.step_time import SlowStepWarning
from mmfuse.engine.loggers import CSVLogger, ProgressLogger, TensorBoardLogger, tensorboard_available
from mmfuse.model import FusedModel
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["autocast_for", "recipe_callbacks", "task_callbacks", "build_callbacks", "freeze_unread_modules"]


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context for ``precision`` (fp32: no autocast)."""
    kind = device.type
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and kind != "cuda":
        raise ValueError(
            f"trainer.precision=fp16 needs a CUDA device (GradScaler), but training runs on {kind}; "
            "use precision=bf16 on CPU"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=kind, dtype=dtype)


def recipe_callbacks(recipe: Recipe, registry: Registry | None) -> list[Callback]:
    """The callbacks named in the recipe's ``callbacks:`` list, built from their plugins."""
    if not recipe.callbacks:
        return []
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    return [registry.get("callback", slot.type).build(slot.params) for slot in recipe.callbacks]


def task_callbacks(model: FusedModel) -> list[Callback]:
    """The callbacks the model's tasks ask for (``Task.training_callbacks``), in task order."""
    return [callback for name, task in model.tasks.items() for callback in task.training_callbacks(name)]


def build_callbacks(config: TrainerConfig, chosen: list[Callback]) -> list[Callback]:
    """Checkpointing (and early stopping when configured) first, then ``chosen`` (the recipe's
    callbacks and the caller's), the TensorBoard and progress loggers as configured, and the CSV
    logger last."""
    chosen = list(chosen)
    early = config.early_stopping
    monitor = config.checkpoint.monitor or (early.monitor if early else "val/loss")
    mode = config.checkpoint.mode or (early.mode if early else "min")
    builtins: list[Callback] = [Checkpointing(config.checkpoint, monitor, mode)]
    if early is not None and not any(isinstance(c, EarlyStopping) for c in chosen):
        builtins.append(EarlyStopping(early))
    tensorboard = config.tensorboard
    if tensorboard == "on" or (tensorboard == "auto" and tensorboard_available()):
        if not any(isinstance(c, TensorBoardLogger) for c in chosen):
            chosen.append(TensorBoardLogger())
    from mmfuse.balance.modulation import build_balance_callbacks

    chosen += build_balance_callbacks(config)  # trainer.gradient_modulation / modality_lr / diagnostics
    from mmfuse.acceleration import acceleration_callbacks

    chosen += acceleration_callbacks(config)  # trainer.compile / channels_last, the data-loading report
    if config.progress != "off":
        chosen.append(ProgressLogger(config.progress))
    if config.slow_step_factor is not None:
        builtins.append(SlowStepWarning(config.slow_step_factor))
    return builtins + chosen + [CSVLogger()]


def freeze_unread_modules(model: FusedModel) -> list[str]:
    """Freeze the fusion head when no task reads the fused vector (``Task.reads_fused``): it gets
    no gradient, so training it would waste optimizer state and break DDP ("Expected to have
    finished reduction"). Return the names of the modules frozen."""
    if any(getattr(task, "reads_fused", True) for task in model.tasks.values()):
        return []
    if not any(p.requires_grad for p in model.fusion.parameters()):
        return []
    model.fusion.requires_grad_(False)
    return ["fusion"]
