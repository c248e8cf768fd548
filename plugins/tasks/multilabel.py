"""``mmfuse/multilabel``: any number of labels per sample (sigmoid per label)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks import MultilabelConfig, split_label_list
from mmfuse_plugins.tasks.vocabulary import LabelVocabulary

__all__ = ["MultilabelTask", "build_multilabel"]


class MultilabelTask(Task):
    """Logits ``[B, L]``; target a multi-hot ``[L]`` from a list of labels per row."""

    def __init__(self, config: MultilabelConfig, fused_dim: int) -> None:
        super().__init__()
        if config.labels is None:
            raise ValueError(
                "multilabel task has no labels: give 'labels' in the recipe or train on data "
                "so they are learned from the training split"
            )
        self.config = config
        self.vocabulary = LabelVocabulary(config.labels)
        self.num_labels = len(self.vocabulary)
        self.head = build_task_head(fused_dim, self.num_labels, config.hidden_dim, config.dropout)
        pos_weight = None
        if config.pos_weight:
            pos_weight = torch.tensor([config.pos_weight.get(str(label), 1.0) for label in self.vocabulary.labels])
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        return self.head(fused)

    def label_names(self) -> list[Any]:
        return list(self.vocabulary.labels)

    def encode_target(self, value: Any) -> Tensor:
        if value is None:
            raise SampleError("missing labels (use an empty list for a sample with no label)")
        target = torch.zeros(self.num_labels, dtype=torch.float32)
        for label in split_label_list(value, self.config.separator):
            target[self.vocabulary.index_of(label)] = 1.0
        return target

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("multilabel loss needs targets")
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), pos_weight=self.pos_weight)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        n, threshold = self.num_labels, self.config.threshold
        return torchmetrics.MetricCollection(
            {
                "f1_micro": torchmetrics.classification.MultilabelF1Score(n, threshold=threshold, average="micro"),
                "f1_macro": torchmetrics.classification.MultilabelF1Score(n, threshold=threshold, average="macro"),
                "map": torchmetrics.classification.MultilabelAveragePrecision(n, average="macro"),
            }
        )

    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Tensor | None) -> None:
        metrics.update(outputs.detach().float().sigmoid(), targets.long())  # type: ignore[union-attr]

    def predict(self, outputs: Tensor) -> list[Any]:
        chosen = (outputs.detach().float().sigmoid() > self.config.threshold).cpu().tolist()
        return [[label for label, on in zip(self.vocabulary.labels, row) if on] for row in chosen]

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.float().sigmoid()


def build_multilabel(config: MultilabelConfig, fused_dim: int, encoder_dims: dict[str, int]) -> MultilabelTask:
    return MultilabelTask(config, fused_dim)
