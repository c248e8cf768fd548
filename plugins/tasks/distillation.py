"""``mmfuse/distillation``: a student head trained towards a teacher's soft targets, optionally
mixed with a hard-label cross-entropy.

Two sources of teacher logits:

- stored: the target column holds, per row, the teacher's logits (a list) or ``{"logits": [...],
  "label": ...}``. ``encode_target`` packs both into one float vector ``[C + 1]``: the C teacher
  logits, then the hard label's class index (``-100`` when the row has none).
- ``teacher: <run or model folder>``: the teacher model runs, frozen, in each step on its own
  inputs (``extra_inputs``: its encoders' columns and preprocessors, built from the same rows);
  the target column, read only when ``alpha < 1``, holds the hard label. The teacher is not part
  of the student (:mod:`mmfuse_plugins.tasks.teacher`), and the saved student does not need it:
  its recipe names the teacher in ``distilled_from`` instead, and it evaluates on hard labels
  (cross-entropy, accuracy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, ExtraInput, SampleError, Task
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks import DistillationConfig, parse_teacher_target
from mmfuse_plugins.tasks.teacher import FrozenTeacher
from mmfuse_plugins.tasks.teacher_folder import class_order, read_teacher_folder
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
        # a plain attribute, not a sub-module: see mmfuse_plugins.tasks.teacher
        self.teacher: FrozenTeacher | None = None
        if config.teacher is not None:
            folder = read_teacher_folder(config.teacher, config.teacher_task)
            self.teacher = FrozenTeacher(config.teacher, folder.task, class_order(config.labels, folder))
        # with a teacher, the target column (hard labels) is read only when they are weighed
        self.needs_target = self.teacher is None or config.alpha < 1

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        return self.head(fused)

    def label_names(self) -> list[Any] | None:
        """The configured class names; None when the teacher's classes are unnamed (indices)."""
        return list(self.config.labels) if self.config.labels is not None else None

    def extra_inputs(self) -> dict[str, ExtraInput]:
        """The teacher's inputs (its encoders' columns and preprocessors); none without a teacher."""
        return self.teacher.inputs if self.teacher is not None else {}

    def export_assets(self, folder: str) -> dict[str, Any]:
        """The saved student stands alone: its recipe does not name the teacher."""
        if self.teacher is None:
            return {}
        return {"teacher": None, "teacher_task": None, "distilled_from": self.config.teacher}

    def encode_target(self, value: Any) -> Tensor:
        if self.config.hard_label_targets:
            if value is None:
                raise SampleError("missing hard label")
            return torch.tensor(self.vocabulary.index_of(value), dtype=torch.long)
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

    def split_targets(self, targets: Any) -> tuple[Tensor, Tensor]:
        """Targets -> (teacher logits ``[B, C]``, class index ``[B]``). Stored: packed ``[B, C + 1]``.
        With a teacher: ``{"target", "inputs", "present"}`` (``Task.extra_inputs``); the teacher
        runs once per batch, its logits kept in the dict under ``"teacher_logits"`` for the
        metrics of the same batch."""
        if self.teacher is None:
            return targets[:, : self.num_classes].float(), targets[:, self.num_classes].round().long()
        if "teacher_logits" not in targets:
            targets["teacher_logits"] = self.teacher.logits(targets["inputs"], targets["present"])
        teacher = targets["teacher_logits"]
        labels = targets.get("target")
        if labels is None:
            labels = torch.full(teacher.shape[:1], NO_LABEL, dtype=torch.long, device=teacher.device)
        return teacher, labels.long()

    def loss(self, outputs: Tensor, targets: Any) -> Tensor:
        if targets is None:
            raise ValueError("distillation loss needs targets (teacher logits)")
        if self.standalone:  # a saved student, evaluated on hard labels
            return F.cross_entropy(outputs.float(), targets.long())
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

    @property
    def standalone(self) -> bool:
        """A saved student without its teacher: hard-label targets only."""
        return self.teacher is None and self.config.distilled_from is not None

    def build_metrics(self) -> torchmetrics.MetricCollection:
        n = self.num_classes
        if self.standalone:
            return torchmetrics.MetricCollection(
                {"accuracy": torchmetrics.classification.MulticlassAccuracy(n, average="micro")}
            )
        return torchmetrics.MetricCollection(
            {
                "teacher_agreement": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
                "accuracy": torchmetrics.classification.MulticlassAccuracy(n, average="micro", ignore_index=NO_LABEL),
            },
            # the two metrics see different targets: compute groups would share their state
            compute_groups=False,
        )

    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Any) -> None:
        if self.standalone:
            metrics["accuracy"].update(outputs.detach().float(), targets.long())
            return
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
