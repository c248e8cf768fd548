"""Auxiliary unimodal heads: for each encoder, a copy of a task's head on that encoder's pooled
features, trained with the task's own loss on the rows that have the modality.

``FusedModel.forward`` returns :class:`FusedOutputs` (a dict of task outputs, so the Predictor and
export see only tasks) whose ``unimodal`` attribute holds the heads' outputs; ``compute_loss``
adds ``weight * loss`` of each head. While training, each head also accumulates its confidence on
the batch (mean probability of the true class), which gradient modulation and modality-balanced
learning rates read (:meth:`UnimodalHeads.take_scores`).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mmfuse.balance.config import UnimodalAuxConfig
from mmfuse.contracts import EncoderOutput, Task
from mmfuse.masking import present_pooled

__all__ = [
    "FusedOutputs",
    "UnimodalOutput",
    "UnimodalHeads",
    "UnimodalMetrics",
    "build_unimodal_heads",
    "for_saving",
]


@dataclass
class UnimodalOutput:
    """One auxiliary head's outputs on every row, and which rows have its modality."""

    outputs: Tensor
    present: Tensor


class FusedOutputs(dict):
    """``{task: outputs}``, plus ``unimodal``: ``{(task, encoder): UnimodalOutput}`` (empty when
    the model has no auxiliary heads)."""

    unimodal: dict[tuple[str, str], UnimodalOutput]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unimodal = {}


class UnimodalHeads(nn.Module):
    """``heads[task][encoder]``: a Task built on the encoder's output width."""

    def __init__(
        self,
        heads: Mapping[str, Mapping[str, Task]],
        settings: Mapping[str, UnimodalAuxConfig],
        input_dims: Mapping[str, int],
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({task: nn.ModuleDict(dict(per_encoder)) for task, per_encoder in heads.items()})
        self.settings = dict(settings)
        self.input_dims = dict(input_dims)
        # per (task, encoder): [sum of confidences, rows] since the last take_scores (not saved)
        self._scores: dict[tuple[str, str], Tensor] = {}
        # task -> (optimizer step, scores taken at it): several readers share one step's scores
        self._taken_at: dict[str, tuple[int, dict[str, Tensor]]] = {}

    def forward(
        self, features: Mapping[str, EncoderOutput], present: Mapping[str, Tensor]
    ) -> dict[tuple[str, str], UnimodalOutput]:
        results: dict[tuple[str, str], UnimodalOutput] = {}
        for task, per_encoder in self.heads.items():
            for encoder, head in per_encoder.items():
                if encoder not in features:
                    continue
                pooled, keep = present_pooled(features, present, encoder, self.input_dims[encoder])
                if self.settings[task].detach:
                    pooled = pooled.detach()
                outputs = head(pooled, {encoder: features[encoder]}, {encoder: keep})
                if not isinstance(outputs, Tensor):
                    raise TypeError(
                        f"tasks.{task}.unimodal_aux: the task's outputs are {type(outputs).__name__}, "
                        "not one tensor per row; auxiliary unimodal heads need a tensor output "
                        "(classification, multilabel, regression, distillation)"
                    )
                results[(task, encoder)] = UnimodalOutput(outputs, keep)
        return results

    def loss(
        self, unimodal: Mapping[tuple[str, str], UnimodalOutput], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """(``sum weight * loss`` over heads, ``{"<task>/<encoder>": loss}``). Each loss is the
        task's loss over the rows that have the modality (zero, still differentiable, when none
        has). One host sync per head: the number of such rows."""
        total: Tensor | None = None
        losses: dict[str, Tensor] = {}
        for (task, encoder), result in unimodal.items():
            head = self.heads[task][encoder]
            target = targets.get(task)
            rows = result.present
            count = int(rows.sum())
            if count == 0:
                loss = result.outputs.sum() * 0.0
            else:
                selected = result.outputs if count == rows.numel() else result.outputs[rows]
                chosen_target = target if count == rows.numel() or target is None else target[rows]
                loss = head.loss(selected, chosen_target)
                if self.training:
                    self._record(task, encoder, head, selected, chosen_target, loss, count)
            losses[f"{task}/{encoder}"] = loss
            weighted = loss.float() * self.settings[task].weight
            total = weighted if total is None else total + weighted
        return total, losses

    def _record(self, task: str, encoder: str, head: Task, outputs: Tensor, target: Tensor | None, loss: Tensor, count: int) -> None:
        with torch.no_grad():
            score = _confidence_sum(head, outputs, target, loss, count)
            entry = torch.stack([score.float(), torch.tensor(float(count), device=score.device)])
            key = (task, encoder)
            self._scores[key] = self._scores[key] + entry if key in self._scores else entry

    def take_scores(self, task: str) -> dict[str, Tensor]:
        """``{encoder: [sum of confidences, rows]}`` accumulated since the last call (training
        forwards only), then reset. An encoder without rows is missing."""
        taken = {encoder: value for (name, encoder), value in self._scores.items() if name == task}
        for encoder in taken:
            del self._scores[(task, encoder)]
        return taken

    def scores_of_step(self, task: str, step: int) -> dict[str, Tensor]:
        """:meth:`take_scores` once per optimizer step; later calls at the same step get the
        same scores (gradient modulation and balanced lr both read them)."""
        cached = self._taken_at.get(task)
        if cached is None or cached[0] != step:
            cached = (step, self.take_scores(task))
            self._taken_at[task] = cached
        return cached[1]


def _confidence_sum(head: Task, outputs: Tensor, target: Tensor | None, loss: Tensor, count: int) -> Tensor:
    """Sum over rows of the probability the head gives the true class (OGM's score); for tasks
    without class probabilities, ``count * exp(-loss)``."""
    probabilities = head.probabilities(outputs)
    if (
        probabilities is not None
        and target is not None
        and probabilities.dim() == 2
        and target.dim() == 1
        and not target.is_floating_point()
    ):
        return probabilities.float().gather(1, target.unsqueeze(1)).sum()
    return torch.exp(-loss.detach().float()) * count


class UnimodalMetrics:
    """The tasks' metrics of every auxiliary head, over the rows that have its modality:
    ``<prefix>/<task>/<encoder>/<metric>``."""

    def __init__(self, heads: UnimodalHeads, device: torch.device) -> None:
        self.heads = heads
        self.metrics = {
            (task, encoder): head.build_metrics().to(device)
            for task, per_encoder in heads.heads.items()
            for encoder, head in per_encoder.items()
        }
        self.updated: set[tuple[str, str]] = set()

    @classmethod
    def of(cls, model: nn.Module, device: torch.device) -> "UnimodalMetrics | None":
        heads = getattr(model, "unimodal_heads", None)
        return cls(heads, device) if heads is not None else None

    def update(self, outputs: Mapping[str, Any], targets: Mapping[str, Tensor]) -> None:
        for key, result in getattr(outputs, "unimodal", {}).items():
            rows = result.present
            if not bool(rows.any()):
                continue
            task, encoder = key
            target = targets.get(task)
            self.heads.heads[task][encoder].update_metrics(
                self.metrics[key], result.outputs[rows], target[rows] if target is not None else None
            )
            self.updated.add(key)

    def compute(self, prefix: str) -> dict[str, float]:
        result: dict[str, float] = {}
        for (task, encoder), collection in self.metrics.items():
            with warnings.catch_warnings():
                # a modality no validation row has: torchmetrics warns and gives 0 / NaN
                warnings.simplefilter("ignore")
                values = collection.compute()
            for name, value in values.items():
                if value.numel() == 1:
                    result[f"{prefix}/{task}/{encoder}/{name}"] = (
                        float(value) if (task, encoder) in self.updated else float("nan")
                    )
        return result


def build_unimodal_heads(
    recipe: Any, registry: Any, tasks: Mapping[str, Task], input_dims: Mapping[str, int]
) -> UnimodalHeads | None:
    """Heads for every task whose slot has ``unimodal_aux`` (None when none has)."""
    heads: dict[str, dict[str, Task]] = {}
    settings: dict[str, UnimodalAuxConfig] = {}
    for name, slot in recipe.tasks.items():
        config = getattr(slot, "unimodal_aux", None)
        if config is None:
            continue
        if not tasks[name].needs_target:
            raise ValueError(
                f"tasks.{name}.unimodal_aux: task type '{slot.type}' has no target column, so there is "
                "nothing for a per-modality head to predict; remove unimodal_aux from this task"
            )
        if tasks[name].extra_inputs():
            raise ValueError(
                f"tasks.{name}.unimodal_aux: the task reads inputs of its own (a distillation teacher), "
                "which a per-modality head would not get; remove unimodal_aux from this task"
            )
        if tasks[name].training_callbacks(name):
            raise ValueError(
                f"tasks.{name}.unimodal_aux: task type '{slot.type}' keeps state that the engine computes from the "
                "training data (e.g. class prototypes), which per-modality heads would not get; remove unimodal_aux "
                "from this task"
            )
        spec = registry.get("task", slot.type)
        heads[name] = {
            encoder: spec.build(slot.params, fused_dim=dim, encoder_dims=dict(input_dims))
            for encoder, dim in input_dims.items()
        }
        settings[name] = config
    return UnimodalHeads(heads, settings, input_dims) if heads else None


def for_saving(model: nn.Module, recipe: Any) -> tuple[nn.Module, Any]:
    """(model, recipe) as they should be saved: auxiliary heads whose ``keep_at_save`` is off are
    left out of both (the model shares every other module with ``model``)."""
    heads: UnimodalHeads | None = getattr(model, "unimodal_heads", None)
    if heads is None:
        return model, recipe
    dropped = [task for task, config in heads.settings.items() if not config.keep_at_save]
    if not dropped:
        return model, recipe
    kept = {task: heads.heads[task] for task in heads.heads if task not in dropped}
    pruned = copy.copy(model)
    pruned._modules = dict(model._modules)
    pruned.unimodal_heads = (
        UnimodalHeads(
            {t: dict(h.items()) for t, h in kept.items()}, {t: heads.settings[t] for t in kept}, heads.input_dims
        )
        if kept
        else None
    )
    recipe = recipe.model_copy(deep=True)
    for task in dropped:
        recipe.tasks[task].unimodal_aux = None
    return pruned, recipe
