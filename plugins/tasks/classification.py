"""``mmfuse/classification``: single-label classification with a label vocabulary."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks import ClassificationConfig
from mmfuse_plugins.tasks.vocabulary import LabelVocabulary

__all__ = ["SingleLabelTask", "ClassificationTask", "build_classification"]


class SingleLabelTask(Task):
    """One label per row from a label vocabulary: target encoding, metrics (accuracy, macro
    P/R/F1), decoding and probabilities of ``[B, num_classes]`` logits. Subclasses make the logits
    (a linear head, similarity to prototypes) and the loss."""

    def __init__(self, labels: list[Any] | None, task: str) -> None:
        super().__init__()
        if labels is None:
            raise ValueError(
                f"{task} task has no labels: give 'labels' in the recipe or train on data "
                "so they are learned from the training split"
            )
        self.vocabulary = LabelVocabulary(labels)
        self.num_classes = len(self.vocabulary)

    def label_names(self) -> list[Any]:
        return list(self.vocabulary.labels)

    def encode_target(self, value: Any) -> Tensor:
        if value is None:
            raise SampleError("missing label")
        if isinstance(value, (list, dict)):
            raise SampleError(f"a label is one value (text or a number), got a {type(value).__name__}: {value!r:.60}")
        return torch.tensor(self.vocabulary.index_of(value), dtype=torch.long)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        n = self.num_classes
        return torchmetrics.MetricCollection(
            {
                "accuracy": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
                "precision": torchmetrics.classification.MulticlassPrecision(n, average="macro"),
                "recall": torchmetrics.classification.MulticlassRecall(n, average="macro"),
                "f1": torchmetrics.classification.MulticlassF1Score(n, average="macro"),
            }
        )

    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Tensor | None) -> None:
        metrics.update(outputs.detach().float(), targets)

    def predict(self, outputs: Tensor) -> list[Any]:
        return self.vocabulary.decode(outputs.argmax(-1).tolist())

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.float().softmax(-1)


class ClassificationTask(SingleLabelTask):
    def __init__(self, config: ClassificationConfig, fused_dim: int) -> None:
        super().__init__(config.labels, "classification")
        self.config = config
        self.head = build_task_head(fused_dim, self.num_classes, config.hidden_dim, config.dropout)
        weights = None
        if config.class_weights:
            weights = torch.tensor([config.class_weights.get(str(label), 1.0) for label in self.vocabulary.labels])
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        return self.head(fused)

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("classification loss needs targets")
        return F.cross_entropy(
            outputs.float(), targets, weight=self.class_weights, label_smoothing=self.config.label_smoothing
        )


def build_classification(config: ClassificationConfig, fused_dim: int, encoder_dims: dict[str, int]) -> ClassificationTask:
    return ClassificationTask(config, fused_dim)
