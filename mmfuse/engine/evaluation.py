"""Evaluation over one rank's loader: the weighted loss, each task's loss and each task's
metrics, reduced across ranks. Keys: ``<prefix>/loss``, ``<prefix>/<task>/loss``,
``<prefix>/<task>/<metric>`` and ``<prefix>/skipped`` (rows the data pipeline skipped).

Under DDP the ranks' shares of an evaluation set may differ by one row, and so their batch
counts by one. When a task's loss runs collectives (``Task.uses_collectives``), every rank must
call it equally often: a rank that runs out of batches (or meets a batch whose rows were all
skipped) then joins with the task's ``empty_loss`` (zero rows), which counts nowhere. No row is
duplicated to even the shares out, so every row counts exactly once in the losses and metrics.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from mmfuse.balance.unimodal import UnimodalMetrics
from mmfuse.engine.distributed import DistributedContext, all_reduce_sum
from mmfuse.engine.loading import move_to_device
from mmfuse.engine.step import batch_rows, collective_tasks, is_empty_batch
from mmfuse.model import FusedModel

__all__ = ["EvaluationInterrupted", "evaluate_model", "batches_on_every_rank", "most_batches_on_a_rank"]


class EvaluationInterrupted(Exception):
    """A stop signal arrived during evaluation."""


def batches_on_every_rank(dataset_size: int, world_size: int, batch_size: int) -> int:
    """Evaluation batches every rank has (ranks' shares may differ by one sample): the only
    batches in which a collective (a signal poll) may run."""
    return math.ceil(len(range(world_size - 1, dataset_size, world_size)) / batch_size)


def most_batches_on_a_rank(dataset_size: int, world_size: int, batch_size: int) -> int:
    """Evaluation batches of the rank with the largest share (rank 0)."""
    return math.ceil(len(range(0, dataset_size, world_size)) / batch_size)


def evaluate_model(
    model: FusedModel,
    loader: DataLoader,
    *,
    prefix: str,
    context: DistributedContext,
    autocast: Callable[[], Any],
    interrupted: Callable[[int], bool],
    rounds: int | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` (left in its previous train/eval mode) on ``loader``; raise
    :class:`EvaluationInterrupted` when ``interrupted(batch_index)`` says so. Batches whose rows
    were all skipped count nowhere. ``rounds``: how many batches every rank runs (the most any rank
    has), needed under DDP when a task's loss runs collectives."""
    device = context.device
    was_training = model.training
    model.eval()
    tasks = dict(model.tasks.items())
    joiners = collective_tasks(model) if context.is_distributed else []
    metrics = {name: task.build_metrics().to(device) for name, task in tasks.items()}
    # [weighted loss, each task's loss..., rows, skipped rows], summed over batches and then over ranks
    sums = torch.zeros(len(tasks) + 3, device=device, dtype=torch.float64)
    index = -1
    unimodal = UnimodalMetrics.of(model, device)  # None without auxiliary unimodal heads
    try:
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if interrupted(index):
                    raise EvaluationInterrupted
                sums[-1] += int(batch.pop("skipped", 0))
                if is_empty_batch(batch):
                    _join(model, joiners, device, autocast)
                    continue
                batch = move_to_device(batch, device)
                targets = batch.get("targets", {})
                with autocast():
                    outputs = model(batch)
                    loss, per_task = model.compute_loss(outputs, targets)
                size = batch_rows(batch)
                losses = torch.stack([loss.detach()] + [per_task[name].detach() for name in tasks])
                sums[:-2] += losses.double() * size
                sums[-2] += size
                for name, task in tasks.items():
                    task.update_metrics(metrics[name], outputs[name], targets.get(name))
                if unimodal is not None:
                    unimodal.update(outputs, targets)
            for _ in range(index + 1, rounds or 0) if joiners else ():
                _join(model, joiners, device, autocast)
        all_reduce_sum(sums, context)
        means = (sums[:-2] / sums[-2].clamp_min(1)).tolist()
        result = {f"{prefix}/loss": means[0]}
        for position, (name, collection) in enumerate(metrics.items(), start=1):
            result[f"{prefix}/{name}/loss"] = means[position]
            for key, value in collection.compute().items():
                if value.numel() == 1:
                    result[f"{prefix}/{name}/{key}"] = float(value)
        result[f"{prefix}/skipped"] = float(sums[-1])
        if unimodal is not None:
            result.update(unimodal.compute(prefix))  # <prefix>/<task>/<encoder>/<metric>
        return result
    finally:
        model.train(was_training)


def _join(model: FusedModel, joiners: list[str], device: torch.device, autocast: Callable[[], Any]) -> None:
    """Enter the collectives of a batch this rank has no rows of (the value counts nowhere)."""
    with autocast():
        for name in joiners:
            model.tasks[name].empty_loss(device)
