"""How the processes of a run share the model (``trainer.strategy``): the few places where that
matters to the trainer, behind one small interface.

- :class:`Replicated` (``ddp``, the default): every process holds the whole model; under torchrun
  DistributedDataParallel averages the gradients. One process is the same without the wrapper.
- :class:`~mmfuse.engine.fsdp.Sharded` (``fsdp``): FSDP2 shards parameters, gradients and
  optimizer state over the processes (see docs/distributed.md).

The trainer asks a strategy to prepare the model before the optimizer is built (``shard``), for
the module a training step runs (``wrap``, again after a stage unfreezes parameters), to skip the
gradient synchronisation of the first micro-batches of an accumulated step, to evaluate, to write
and read the model and optimizer parts of a checkpoint, and for the whole trained model to save.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmfuse.engine.checkpoint import Checkpoint, CheckpointError, checkpoint_name, load_model_weights, save_checkpoint
from mmfuse.engine.config import TrainerConfig
from mmfuse.engine.distributed import DistributedContext
from mmfuse.engine.state import TrainState

__all__ = ["Strategy", "Replicated", "build_strategy"]


class Strategy(ABC):
    """The interface; :class:`Replicated` and :class:`~mmfuse.engine.fsdp.Sharded` implement it."""

    def __init__(self, config: TrainerConfig, context: DistributedContext) -> None:
        self.config, self.context = config, context

    def shard(self, model: nn.Module) -> None:
        """Prepare ``model`` (already on its device) before the optimizer is built over its parameters."""

    @abstractmethod
    def wrap(self, loss_step: nn.Module) -> nn.Module | None:
        """The module a training step calls in place of ``loss_step``; None: ``loss_step`` itself
        (nothing to synchronise)."""

    @abstractmethod
    def without_gradient_sync(self, wrapped: nn.Module) -> ContextManager[Any]:
        """Around the backward of a micro-batch that is not the last of its step."""

    def evaluating(self, model: nn.Module) -> ContextManager[Any]:
        """Around an evaluation, which every rank runs on its own share of the batches."""
        return contextlib.nullcontext()

    @abstractmethod
    def save_checkpoint(
        self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, meta: dict[str, Any]
    ) -> Path:
        """Write the checkpoint of ``state`` (optimizer, schedule, RNG... captured except the
        optimizer's); a collective. Return its path on every rank."""

    @abstractmethod
    def load_weights(self, checkpoint: Checkpoint, model: nn.Module) -> None:
        """Copy a checkpoint's weights into the model (every rank)."""

    @abstractmethod
    def load_optimizer(self, checkpoint: Checkpoint, saved: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Restore the optimizer's state from a checkpoint (every rank)."""

    @abstractmethod
    def full_model(self, model: nn.Module) -> nn.Module | None:
        """The trained model with all of its weights on rank 0 (for saving and predicting); a
        collective. None on the other ranks when only rank 0 gets one."""


class Replicated(Strategy):
    """The whole model on every process; DistributedDataParallel under torchrun."""

    def wrap(self, loss_step: nn.Module) -> nn.Module | None:
        if not self.context.is_distributed:
            return None
        device = self.context.device
        return DistributedDataParallel(
            loss_step, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.config.find_unused_parameters,
        )

    def without_gradient_sync(self, wrapped: nn.Module) -> ContextManager[Any]:
        return wrapped.no_sync()  # type: ignore[operator]

    def save_checkpoint(
        self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, meta: dict[str, Any]
    ) -> Path:
        if not self.context.is_main:
            return folder / checkpoint_name(state.global_step)
        snapshot = replace(state, optimizer=optimizer.state_dict())
        return save_checkpoint(folder, state.global_step, model, snapshot.to_dict(), meta)

    def load_weights(self, checkpoint: Checkpoint, model: nn.Module) -> None:
        if checkpoint.sharded:
            raise CheckpointError(
                f"{checkpoint.path} is a sharded checkpoint (trainer.strategy: fsdp); resume it with "
                "trainer.strategy: fsdp under torchrun, or load its weights with mmfuse.load"
            )
        device = self.context.device
        load_model_weights(model, {k: v.to(device) for k, v in checkpoint.weights.items()}, checkpoint.path)

    def load_optimizer(self, checkpoint: Checkpoint, saved: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.load_state_dict(saved.optimizer)

    def full_model(self, model: nn.Module) -> nn.Module | None:
        return model


def build_strategy(config: TrainerConfig, context: DistributedContext) -> Strategy:
    """The strategy ``trainer.strategy`` names, for this process's place in the run."""
    if config.strategy == "fsdp":
        from mmfuse.engine.fsdp import Sharded

        return Sharded(config, context)
    return Replicated(config, context)
