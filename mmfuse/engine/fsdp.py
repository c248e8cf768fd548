"""``trainer.strategy: fsdp``: the fused model sharded over the torchrun processes with FSDP2
(``torch.distributed.fsdp.fully_shard``).

Wrapping policy (``trainer.fsdp.wrap``): every encoder (``encoders``), each of an encoder's layer
groups (``encoder_layers``, the blocks ``Encoder.layer_groups()`` returns, e.g. transformer
layers) and the fusion head (``fusion``) get their own ``fully_shard``, innermost first; the fused
model is the root unit and holds the rest (task heads, loss weights). One unit's parameters are
all-gathered just before its forward and freed after it (``reshard_after_forward``), so a process
holds the whole of one unit at a time, never the whole model. ``trainer.fsdp.mixed_precision``
becomes FSDP's ``MixedPrecisionPolicy``.

Every rank must run the forward of every unit equally often (each forward all-gathers). Hence:

- every encoder runs its forward in every batch (``FusedModel.every_encoder_forwards``): skipping
  an encoder on a rank whose batch lacks its modality would leave the other ranks waiting. It
  still encodes only the rows that have the modality (absent rows never reach BatchNorm, as under
  DDP); a batch with none runs the first row in eval mode and multiplies it by zero;
- a training micro-batch with no rows (all skipped, or one row that BatchNorm cannot take) stops
  the fit with a clear error instead of hanging;
- evaluation, where ranks may hold different numbers of batches, first gathers every unit once
  (``unshard``) and keeps the parameters gathered until it ends: its forwards then run no
  collective. That holds the whole model (parameters only) on every rank while evaluating.

Gradient accumulation turns the reduce-scatter off for all but the last micro-batch of a step
(``set_requires_gradient_sync``). Checkpoints are sharded (:mod:`mmfuse.engine.sharded_checkpoint`).
The model to save is gathered to rank 0 (``get_model_state_dict(full_state_dict, cpu_offload)``)
into an unsharded copy of the model's structure, made on the meta device (no memory) before
sharding, so the saved model folder is the same as a DDP run's.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from mmfuse.engine.checkpoint import Checkpoint, CheckpointError
from mmfuse.engine.config import TrainerConfig
from mmfuse.engine.distributed import DistributedContext
from mmfuse.engine.sharded_checkpoint import load_sharded_model, load_sharded_optimizer, save_sharded_checkpoint
from mmfuse.engine.state import TrainState
from mmfuse.engine.strategy import Strategy

__all__ = ["Sharded", "sharding_units", "EveryRankForward", "EmptyBatchUnderFSDP", "broadcast_from_rank0"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class EmptyBatchUnderFSDP(RuntimeError):
    """A training micro-batch had no rows to run on this rank under ``trainer.strategy: fsdp``."""


def sharding_units(model: nn.Module, wrap: list[str]) -> list[nn.Module]:
    """The modules that get their own ``fully_shard`` before the root, innermost first (each
    unit's parameters are those not already in a unit inside it); modules without parameters
    are left to their parent. A layer group that is a plain container (a ModuleList of blocks)
    contributes each block."""
    units: list[nn.Module] = []
    for encoder in model.encoders.values():  # type: ignore[attr-defined]
        if "encoder_layers" in wrap and hasattr(encoder, "layer_groups"):
            units += [block for group in encoder.layer_groups() if group is not encoder for block in _callable(group)]
        if "encoders" in wrap:
            units.append(encoder)
    if "fusion" in wrap:
        units.append(model.fusion)  # type: ignore[attr-defined]
    unique = list({id(unit): unit for unit in units}.values())
    return [unit for unit in unique if any(True for _ in unit.parameters())]


def _callable(module: nn.Module) -> list[nn.Module]:
    """``module``, or the modules inside it when it is a container without a forward of its own
    (a ModuleList of blocks): FSDP hooks a unit's forward, so a unit must be called."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and type(module).forward is nn.Module.forward:
        return [inner for child in module.children() for inner in _callable(child)]
    return [module]


class EveryRankForward(nn.Module):
    """The loss step of a sharded model. Before each forward, rank 0's buffers (BatchNorm running
    statistics) are broadcast to every rank, as DistributedDataParallel does (``broadcast_buffers``):
    FSDP leaves buffers unsharded and unsynchronised, so without it each rank would evaluate with
    its own statistics and checkpoints would hold an arbitrary rank's. A micro-batch without rows
    cannot join the other ranks' all-gathers, so it stops the fit with an explanation."""

    def __init__(self, loss_step: nn.Module, rank: int) -> None:
        super().__init__()
        self.loss_step, self.rank = loss_step, rank
        self.synced_buffers = [buffer for buffer in loss_step.buffers() if buffer.numel()]

    def forward(self, batch: dict[str, Any] | None) -> torch.Tensor:
        if batch is None or not batch.get("inputs"):
            raise EmptyBatchUnderFSDP(
                f"rank {self.rank}: a training micro-batch has no rows to run (every row was skipped by "
                "data.on_bad_sample: skip, or a single row was set aside because the model trains BatchNorm). "
                "Under trainer.strategy: fsdp every rank must run every forward, so this cannot be stepped "
                "over; fix or drop the bad samples, set data.drop_last: true, or use trainer.strategy: ddp"
            )
        broadcast_from_rank0(self.synced_buffers)
        return self.loss_step(batch)


class Sharded(Strategy):
    """FSDP2 over all torchrun processes (see the module docstring)."""

    def __init__(self, config: TrainerConfig, context: DistributedContext) -> None:
        super().__init__(config, context)
        if not context.is_distributed:
            raise ValueError(
                "trainer.strategy: fsdp shards the model over the processes of a torchrun launch, but this is "
                "one process; launch it with `torchrun --nproc_per_node N -m mmfuse train ...` (N > 1), "
                "or train on one process with trainer.strategy: ddp (the default)"
            )
        self.root: nn.Module | None = None
        self.inner: list[nn.Module] = []
        self.skeleton: nn.Module | None = None

    def shard(self, model: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        settings = self.config.fsdp
        self.skeleton = _meta_copy(model)  # before sharding: the structure of the model to save
        model.every_encoder_forwards = True  # type: ignore[assignment]  # every rank all-gathers every encoder
        precision = settings.mixed_precision
        policy = MixedPrecisionPolicy(
            param_dtype=DTYPES[precision.param_dtype] if precision and precision.param_dtype else None,
            reduce_dtype=DTYPES[precision.reduce_dtype] if precision and precision.reduce_dtype else None,
        )
        mesh = init_device_mesh(self.context.device.type, (self.context.world_size,))
        options = {"mesh": mesh, "reshard_after_forward": settings.reshard_after_forward, "mp_policy": policy}
        for unit in sharding_units(model, settings.wrap):
            fully_shard(unit, **options)
        # the root's parameters are needed again at once by the backward (and by compute_loss,
        # outside the root's forward): they stay gathered until the backward reshards them
        fully_shard(model, **{**options, "reshard_after_forward": False})
        self.root = model
        self.inner = [m for m in model.modules() if m is not model and isinstance(m, FSDPModule)]

    def wrap(self, loss_step: nn.Module) -> nn.Module | None:
        return EveryRankForward(loss_step, self.context.rank)

    def without_gradient_sync(self, wrapped: nn.Module) -> ContextManager[Any]:
        return self._no_reduce_scatter()

    @contextlib.contextmanager
    def _no_reduce_scatter(self) -> Iterator[None]:
        root = self._root()
        root.set_requires_gradient_sync(False)  # gradients accumulate unsharded until the last micro-batch
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)

    @contextlib.contextmanager
    def evaluating(self, model: nn.Module) -> Iterator[None]:
        root = self._root()
        units = [root, *self.inner]
        for unit in self.inner:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:  # the one collective of the evaluation: every rank, same order
            unit.unshard()
        try:
            yield
        finally:
            for unit in self.inner:
                unit.set_reshard_after_forward(self.config.fsdp.reshard_after_forward, recurse=False)
            for unit in units:
                unit.reshard()

    def save_checkpoint(
        self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, meta: dict[str, Any]
    ) -> Path:
        # a checkpoint holds rank 0's buffers, as under DDP (DCP would store an arbitrary rank's copy)
        broadcast_from_rank0([buffer for buffer in model.buffers() if buffer.numel()])
        return save_sharded_checkpoint(folder, state.global_step, model, optimizer, replace(state, optimizer={}).to_dict(), meta, self.context)

    def load_weights(self, checkpoint: Checkpoint, model: nn.Module) -> None:
        if not checkpoint.sharded:
            raise CheckpointError(
                f"{checkpoint.path} is not a sharded checkpoint (it was written by trainer.strategy: ddp); resume it "
                "with trainer.strategy: ddp, or start a new run from its weights (init_from)"
            )
        load_sharded_model(checkpoint.path, model)

    def load_optimizer(self, checkpoint: Checkpoint, saved: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        load_sharded_optimizer(checkpoint.path, model, optimizer)

    def full_model(self, model: nn.Module) -> nn.Module | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.context.is_main:
            return None
        assert self.skeleton is not None, "full_model() before shard()"
        whole = self.skeleton.to_empty(device="cpu")
        with torch.no_grad():
            for name, buffer in model.named_buffers():  # buffers are not sharded; non-persistent ones are not in `full`
                whole.get_buffer(name).copy_(buffer)
        whole.load_state_dict(full, strict=True)
        return whole.train(model.training)

    def _root(self) -> Any:
        assert self.root is not None, "the model is not sharded yet"
        return self.root


def broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values on every rank: one broadcast per dtype."""
    import torch.distributed as dist

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    with torch.no_grad():
        for group in by_dtype.values():
            flat = torch.cat([tensor.reshape(-1) for tensor in group])
            dist.broadcast(flat, src=0)
            for tensor, part in zip(group, flat.split([tensor.numel() for tensor in group])):
                tensor.copy_(part.view_as(tensor))


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (no memory):
    every other attribute (preprocessors, labels, configs) is copied as usual."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)
