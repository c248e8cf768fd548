"""The parts a Trainer is built from that follow from the recipe alone: the autocast context for
``trainer.precision`` and the list of callbacks (built-in and named in the recipe)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from mmfuse.engine.callbacks import Callback, Checkpointing, EarlyStopping
from mmfuse.engine.loggers import CSVLogger, ProgressLogger, TensorBoardLogger, tensorboard_available
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["autocast_for", "build_callbacks"]


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


def build_callbacks(recipe: Recipe, extra: list[Callback], registry: Registry | None) -> list[Callback]:
    """Checkpointing (and early stopping when configured) first, then the recipe's callbacks,
    ``extra``, the TensorBoard and progress loggers as configured, and the CSV logger last."""
    if registry is None:
        from mmfuse.plugins import get_registry

        registry = get_registry()
    config = recipe.trainer
    named = [registry.get("callback", slot.type).build(slot.params) for slot in recipe.callbacks]
    chosen = named + extra
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
    if config.progress != "off":
        chosen.append(ProgressLogger(config.progress))
    return builtins + chosen + [CSVLogger()]
