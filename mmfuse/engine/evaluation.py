"""Evaluation over one rank's loader: the weighted loss, each task's loss and each task's
metrics, reduced across ranks. Keys: ``<prefix>/loss``, ``<prefix>/<task>/loss`` and
``<prefix>/<task>/<metric>``."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from mmfuse.engine.distributed import DistributedContext, all_reduce_sum
from mmfuse.engine.loading import move_to_device
from mmfuse.engine.step import is_empty_batch
from mmfuse.model import FusedModel

__all__ = ["EvaluationInterrupted", "evaluate_model", "batches_on_every_rank"]


class EvaluationInterrupted(Exception):
    """A stop signal arrived during evaluation."""


def batches_on_every_rank(dataset_size: int, world_size: int, batch_size: int) -> int:
    """Evaluation batches every rank has (ranks' shares may differ by one sample): the only
    batches in which a collective (a signal poll) may run."""
    return math.ceil(len(range(world_size - 1, dataset_size, world_size)) / batch_size)


def evaluate_model(
    model: FusedModel,
    loader: DataLoader,
    *,
    prefix: str,
    context: DistributedContext,
    autocast: Callable[[], Any],
    interrupted: Callable[[int], bool],
) -> dict[str, float]:
    """Evaluate ``model`` (left in its previous train/eval mode) on ``loader``; raise
    :class:`EvaluationInterrupted` when ``interrupted(batch_index)`` says so. Batches whose rows
    were all skipped are stepped over."""
    device = context.device
    was_training = model.training
    model.eval()
    tasks = dict(model.tasks.items())
    metrics = {name: task.build_metrics().to(device) for name, task in tasks.items()}
    # [weighted loss, each task's loss..., samples], summed over batches and then over ranks
    sums = torch.zeros(len(tasks) + 2, device=device, dtype=torch.float64)
    try:
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if interrupted(index):
                    raise EvaluationInterrupted
                batch.pop("skipped", None)
                if is_empty_batch(batch):
                    continue
                batch = move_to_device(batch, device)
                targets = batch.get("targets", {})
                with autocast():
                    outputs = model(batch)
                    loss, per_task = model.compute_loss(outputs, targets)
                size = _batch_size(batch)
                losses = torch.stack([loss.detach()] + [per_task[name].detach() for name in tasks])
                sums[:-1] += losses.double() * size
                sums[-1] += size
                for name, task in tasks.items():
                    task.update_metrics(metrics[name], outputs[name], targets.get(name))
        all_reduce_sum(sums, context)
        means = (sums[:-1] / sums[-1].clamp_min(1)).tolist()
        result = {f"{prefix}/loss": means[0]}
        for position, (name, collection) in enumerate(metrics.items(), start=1):
            result[f"{prefix}/{name}/loss"] = means[position]
            for key, value in collection.compute().items():
                if value.numel() == 1:
                    result[f"{prefix}/{name}/{key}"] = float(value)
        return result
    finally:
        model.train(was_training)


def _batch_size(batch: dict[str, Any]) -> int:
    for group in ("targets", "present"):
        for value in batch.get(group, {}).values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return int(value.shape[0])
    for tensors in batch.get("inputs", {}).values():
        for value in tensors.values():
            return int(value.shape[0])
    raise ValueError("cannot tell the batch size: the batch has no targets, presence masks or inputs")
