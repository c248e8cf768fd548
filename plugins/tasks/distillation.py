"""``mmfuse/distillation``: a student head trained towards a teacher's soft targets, optionally
mixed with a hard-label cross-entropy.

The target column holds, per row, the teacher's logits (a list) or ``{"logits": [...], "label":
...}``. ``encode_target`` packs both into one float vector ``[C + 1]``: the C teacher logits, then
the hard label's class index (``-100`` when the row has none)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks import DistillationConfig, parse_teacher_target
from mmfuse_plugins.tasks.vocabulary import LabelVocabulary

__all__ = ["NO_LABEL", "DistillationTask", "build_distillation"]

#: class index of a row without a hard label (cross-entropy's default ignore_index)
NO_LABEL = -100


class DistillationTask(Task):
    """``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label)``; the
    cross-entropy averages over the rows that have a label."""

    def __init__(self, config: DistillationConfig, fused_dim: int) -> None:
        super().__init__()
        if config.classes is None:
            raise ValueError(
                "distillation task does not know the number of classes: give 'num_classes' or 'labels' "
                "in the recipe, or train on data so it is read from the teacher logits"
            )
        self.config = config
        self.num_classes = config.classes
        # without configured names, the class indices are the labels (hard labels and predictions)
        self.vocabulary = LabelVocabulary(config.labels if config.labels is not None else range(self.num_classes))
        self.head = build_task_head(fused_dim, self.num_classes, config.hidden_dim, config.dropout)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        return self.head(fused)

    def label_names(self) -> list[Any] | None:
        """The configured class names; None when the teacher's classes are unnamed (indices)."""
        return list(self.config.labels) if self.config.labels is not None else None

    def encode_target(self, value: Any) -> Tensor:
        if value is None:
            raise SampleError("missing teacher logits")
        try:
            target = parse_teacher_target(value)
        except ValueError as exc:
            raise SampleError(str(exc)) from exc
        if len(target.logits) != self.num_classes:
            raise SampleError(f"expected {self.num_classes} teacher logits, got {len(target.logits)}")
        label = NO_LABEL
        if target.label is not None:
            label = self.vocabulary.index_of(target.label)
        return torch.tensor([*target.logits, float(label)], dtype=torch.float32)

    def split_targets(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Packed targets ``[B, C + 1]`` -> (teacher logits ``[B, C]``, class index ``[B]``)."""
        return targets[:, : self.num_classes].float(), targets[:, self.num_classes].round().long()

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("distillation loss needs targets (teacher logits)")
        teacher, labels = self.split_targets(targets)
        student = outputs.float()
        temperature, alpha = self.config.temperature, self.config.alpha
        soft = F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * temperature**2
        if alpha == 1.0:
            return soft
        labelled = labels != NO_LABEL
        per_row = F.cross_entropy(student, labels.clamp_min(0), reduction="none")
        hard = torch.where(labelled, per_row, torch.zeros_like(per_row)).sum() / labelled.sum().clamp_min(1)
        return alpha * soft + (1 - alpha) * hard

    def build_metrics(self) -> torchmetrics.MetricCollection:
        n = self.num_classes
        return torchmetrics.MetricCollection(
            {
                "teacher_agreement": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
                "accuracy": torchmetrics.classification.MulticlassAccuracy(n, average="micro", ignore_index=NO_LABEL),
            },
            # the two metrics see different targets: compute groups would share their state
            compute_groups=False,
        )

    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Tensor | None) -> None:
        teacher, labels = self.split_targets(targets)  # type: ignore[arg-type]
        student = outputs.detach().float()
        metrics["teacher_agreement"].update(student, teacher.argmax(-1))
        metrics["accuracy"].update(student, labels)

    def predict(self, outputs: Tensor) -> list[Any]:
        return self.vocabulary.decode(outputs.argmax(-1).tolist())

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.float().softmax(-1)


def build_distillation(config: DistillationConfig, fused_dim: int, encoder_dims: dict[str, int]) -> DistillationTask:
    return DistillationTask(config, fused_dim)
