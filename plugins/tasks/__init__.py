"""Built-in tasks (head + loss + metrics). Config classes, the torch-free parsing of target values
that ``fit_targets`` needs, and registration; torch code in sibling modules.
docs/fusion_and_tasks.md describes each task and its target format."""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfuse.hookspecs import hookimpl
from mmfuse.recipe_references import EncoderName
from mmfuse_plugins.tasks.vocabulary import Label, check_vocabulary, sorted_labels
from mmfuse_plugins.tasks.self_supervised import MaskedFeaturesConfig, MaskedLMConfig
from mmfuse_plugins.tasks.teacher_folder import class_order, model_folder_of, read_teacher_folder
from mmfuse_plugins.tasks.text_configs import ExtractiveQAConfig, GenerationConfig, TokenClassificationConfig

__all__ = [
    "ClassificationConfig",
    "RegressionConfig",
    "MultilabelConfig",
    "ContrastiveConfig",
    "PrototypeConfig",
    "DistillationConfig",
    "TeacherTarget",
    "parse_teacher_target",
    "split_label_list",
    "ExtractiveQAConfig",
    "TokenClassificationConfig",
    "GenerationConfig",
]

class ClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: metric keys of this task's evaluation (``val/<task>/<metric>``), checked by `mmfuse validate`
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "precision", "recall", "f1")
    #: one class per row in the target column: data.shots_per_class draws its rows per class of it
    single_label_classes: ClassVar[bool] = True

    labels: list[Label] | None = Field(
        None, description="class labels in index order; default: learned from the training split"
    )
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer in the head")
    dropout: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: dict[str, float] | None = Field(None, description="label -> loss weight")

    @model_validator(mode="after")
    def _check(self) -> "ClassificationConfig":
        check_vocabulary("classification", self.labels, 2, "class_weights", self.class_weights)
        return self

    def fit_targets(self, values: list[Any]) -> "ClassificationConfig":
        """Learn the label vocabulary from the training targets (sorted, stable)."""
        if self.labels is not None:
            return self
        # a list or dict is not a label: encode_target rejects its row with line and column
        return self.model_copy(update={"labels": sorted_labels(v for v in values if not isinstance(v, (list, dict)))})


class RegressionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("mae", "rmse", "r2")

    output_dim: int = Field(1, gt=0, description="number of regressed values")
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    hidden_dim: int | None = Field(None, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class MultilabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("f1_micro", "f1_macro", "map")

    labels: list[Label] | None = Field(
        None, description="label vocabulary in index order; default: learned from the training split"
    )
    separator: str | None = Field(
        None, description="split a string target on this ('a|b'); default: a string is one label"
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="probability above which a label is predicted")
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer in the head")
    dropout: float = Field(0.0, ge=0, lt=1)
    pos_weight: dict[str, float] | None = Field(None, description="label -> weight of its positive term")

    @model_validator(mode="after")
    def _check(self) -> "MultilabelConfig":
        check_vocabulary("multilabel", self.labels, 1, "pos_weight", self.pos_weight)
        return self

    def conformance_targets(self) -> list[Any]:
        """Sample targets for mmfuse.testing: label lists of several lengths, one empty."""
        labels = self.labels or ["news", "sport", "art"]
        return [[labels[0]], list(labels[:2]), [], [labels[-1]]]

    def fit_targets(self, values: list[Any]) -> "MultilabelConfig":
        """Learn the label vocabulary: every label of every training row (sorted, stable)."""
        if self.labels is not None:
            return self
        labels = sorted_labels(
            label for value in values if value is not None for label in split_label_list(value, self.separator)
        )
        if not labels:
            raise ValueError("multilabel: no labels found in the training targets; give 'labels' in the recipe")
        return self.model_copy(update={"labels": labels})


def split_label_list(value: Any, separator: str | None) -> list[Any]:
    """One multilabel target value -> its labels (a list, or a string split on ``separator``)."""
    if isinstance(value, str):
        if separator is None:
            return [value]
        return [part.strip() for part in value.split(separator) if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class ContrastiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric_names: ClassVar[tuple[str, ...]] = ("recall@1", "recall@5")

    encoders: list[EncoderName] = Field(..., description="the two encoders whose pooled embeddings are aligned")
    embed_dim: int = Field(128, gt=0, description="shared embedding size both sides are projected to")
    temperature: float = Field(0.07, gt=0, description="initial softmax temperature")
    learn_temperature: bool = True
    max_logit_scale: float = Field(100.0, gt=1, description="clamp of 1/temperature (CLIP: 100)")
    gather_across_processes: bool = Field(
        True, description="under torch.distributed, use every process's batch as negatives"
    )

    @field_validator("encoders")
    @classmethod
    def _two_distinct(cls, value: list[str]) -> list[str]:
        if len(value) != 2 or value[0] == value[1]:
            raise ValueError(f"contrastive needs exactly two different encoders, got {value}")
        return value


class PrototypeConfig(BaseModel):
    """``mmfuse/prototype``: classify by similarity to per-class prototypes (class means of the
    training rows' fused vectors); docs/fusion_and_tasks.md and docs/pretraining.md#few-shot."""

    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "precision", "recall", "f1")
    single_label_classes: ClassVar[bool] = True

    labels: list[Label] | None = Field(
        None, description="class labels in index order; default: learned from the training split"
    )
    distance: Literal["cosine", "euclidean"] = Field(
        "cosine", description="cosine: scale * cos(x, prototype); euclidean: -scale * squared distance"
    )
    temperature: float = Field(0.1, gt=0, description="initial temperature: logits are similarities / temperature")
    learn_temperature: bool = Field(True, description="train the temperature (the head's one parameter)")
    max_scale: float = Field(100.0, gt=1, description="clamp of 1/temperature")

    @model_validator(mode="after")
    def _check(self) -> "PrototypeConfig":
        check_vocabulary("prototype", self.labels, 2, "", None)
        if 1 / self.temperature > self.max_scale:
            raise ValueError(f"1/temperature ({1 / self.temperature:g}) is above max_scale ({self.max_scale:g})")
        return self

    def fit_targets(self, values: list[Any]) -> "PrototypeConfig":
        """Learn the label vocabulary from the training targets (sorted, stable)."""
        if self.labels is not None:
            return self
        return self.model_copy(update={"labels": sorted_labels(v for v in values if not isinstance(v, (list, dict)))})


class DistillationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("teacher_agreement", "accuracy")

    labels: list[Label] | None = Field(
        None, description="class names in the teacher's logit order (needed for string hard labels)"
    )
    num_classes: int | None = Field(
        None, ge=2, description="number of teacher logits; default: len(labels) or the training targets"
    )
    temperature: float = Field(2.0, gt=0, description="softens both teacher and student distributions")
    alpha: float = Field(
        1.0, ge=0, le=1, description="weight of the KL term; 1 - alpha weighs the hard-label cross-entropy"
    )
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer in the student head")
    dropout: float = Field(0.0, ge=0, lt=1)
    teacher: str | None = Field(
        None,
        description="run folder or model folder of a trained model whose logits are the soft targets, computed "
        "in each step (frozen); ./ and ../ are relative to the recipe file. Default: logits stored in the target column",
    )
    teacher_task: str | None = Field(
        None, description="the teacher's classifying task to distil; default: its only one"
    )
    distilled_from: str | None = Field(
        None,
        description="written into a saved student in place of 'teacher' (for the record): the student stands "
        "alone, and its target column holds hard labels (evaluated by cross-entropy and accuracy)",
    )

    @field_validator("teacher")
    @classmethod
    def _teacher_is_a_model_folder(cls, value: str | None) -> str | None:
        # absolute, so the run's resolved recipe (and a resume) finds it from any folder
        return None if value is None else str(model_folder_of(value).resolve())

    @model_validator(mode="after")
    def _check(self) -> "DistillationConfig":
        check_vocabulary("distillation", self.labels, 2, "", None)
        if self.labels is not None and self.num_classes is not None and self.num_classes != len(self.labels):
            raise ValueError(f"num_classes ({self.num_classes}) != number of labels ({len(self.labels)})")
        if self.teacher is not None and self.distilled_from is not None:
            raise ValueError("distilled_from describes a saved student and excludes 'teacher': remove one of them")
        if self.teacher is None:
            if self.teacher_task is not None:
                raise ValueError("teacher_task is set but 'teacher' is not: give the teacher's run or model folder")
            return self
        teacher = read_teacher_folder(self.teacher, self.teacher_task)
        self.teacher_task = teacher.task
        if self.classes is not None and self.classes != teacher.num_classes:
            key = "labels" if self.labels is not None else "num_classes"
            raise ValueError(
                f"{key}: the student has {self.classes} classes, the teacher's task '{teacher.task}' "
                f"({teacher.model_dir}) has {teacher.num_classes}; leave '{key}' out to take the teacher's"
            )
        class_order(self.labels, teacher)  # the same classes by name, when both sides name them
        if self.labels is None and teacher.labels is not None:
            self.labels = list(teacher.labels)
        elif self.classes is None:
            self.num_classes = teacher.num_classes
        return self

    @property
    def classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else self.num_classes

    @property
    def stratify_split(self) -> bool:
        """Whether the target column can stratify a split: not when the teacher gives every target."""
        return self.teacher is None or self.alpha < 1

    @property
    def hard_label_targets(self) -> bool:
        """Whether the target column holds hard labels (a teacher folder, or a saved student)."""
        return self.teacher is not None or self.distilled_from is not None

    def conformance_targets(self) -> list[Any]:
        """Sample targets for mmfuse.testing: teacher logits, with and without a hard label."""
        classes = self.classes or 3
        labels = self.labels or list(range(classes))
        return [
            {"logits": [float(i == row % classes) for i in range(classes)], "label": labels[row % classes]}
            if row % 2
            else [0.5 * row - i for i in range(classes)]
            for row in range(4)
        ]

    def fit_targets(self, values: list[Any]) -> "DistillationConfig":
        """Take the number of classes from the teacher logits of the training targets (with a
        teacher folder, the classes are the teacher's, and the target column holds hard labels)."""
        if self.hard_label_targets:
            return self
        targets = [parse_teacher_target(v) for v in values if v is not None]
        lengths = {len(target.logits) for target in targets}
        if len(lengths) > 1:
            raise ValueError(f"distillation: teacher logits of the training rows differ in length: {sorted(lengths)}")
        if self.alpha < 1 and targets and all(target.label is None for target in targets):
            raise ValueError(
                f"distillation: alpha={self.alpha} weighs a hard-label loss, but no training target has a "
                "'label'; write targets as {'logits': [...], 'label': ...} or set alpha: 1"
            )
        if self.classes is not None:
            if lengths and lengths != {self.classes}:
                raise ValueError(f"distillation: {self.classes} classes configured, teacher gives {lengths.pop()} logits")
            return self
        if not lengths:
            return self
        return self.model_copy(update={"num_classes": lengths.pop()})


class TeacherTarget(BaseModel):
    """One distillation target: the teacher's logits and, optionally, the hard label."""

    model_config = ConfigDict(extra="forbid")

    logits: list[float]
    label: Label | None = None


def parse_teacher_target(value: Any) -> TeacherTarget:
    """A distillation target value -> TeacherTarget.

    Accepted: a list of teacher logits; ``{"logits": [...], "label": "cat"}``; or either one as a
    JSON string (CSV manifests). Raises ValueError saying which form was expected."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"distillation target is not JSON: {value[:80]!r}") from exc
    if isinstance(value, (list, tuple)):
        value = {"logits": list(value)}
    if not isinstance(value, dict):
        raise ValueError(
            f"distillation target must be a list of teacher logits or {{'logits': [...], 'label': ...}}, got {value!r}"
        )
    try:
        target = TeacherTarget.model_validate(value)
    except ValueError as exc:
        raise ValueError(f"invalid distillation target {value!r}: {exc}") from exc
    if not all(math.isfinite(x) for x in target.logits):
        raise ValueError(f"non-finite teacher logit in {target.logits!r}")
    return target


@hookimpl
def mmfuse_register_tasks(register) -> None:
    register(
        "mmfuse/classification",
        builder="mmfuse_plugins.tasks.classification:build_classification",
        config=ClassificationConfig,
        description="single-label classification: cross-entropy; accuracy, macro P/R/F1",
    )
    register(
        "mmfuse/regression",
        builder="mmfuse_plugins.tasks.regression:build_regression",
        config=RegressionConfig,
        description="regression: MSE or Huber; MAE, RMSE, R2",
    )
    register(
        "mmfuse/multilabel",
        builder="mmfuse_plugins.tasks.multilabel:build_multilabel",
        config=MultilabelConfig,
        description="multi-label classification: BCE with logits; micro/macro F1, mAP",
    )
    register(
        "mmfuse/contrastive",
        builder="mmfuse_plugins.tasks.contrastive:build_contrastive",
        config=ContrastiveConfig,
        description="CLIP-style symmetric InfoNCE between two encoders; retrieval recall@1/5",
        aliases=("clip",),
    )
    register(
        "mmfuse/prototype",
        builder="mmfuse_plugins.tasks.prototype:build_prototype",
        config=PrototypeConfig,
        description="few-shot: nearest class prototype (mean fused vector per class), cosine or euclidean; accuracy, macro P/R/F1",
    )
    register(
        "mmfuse/distillation",
        builder="mmfuse_plugins.tasks.distillation:build_distillation",
        config=DistillationConfig,
        description="KL to a teacher's soft targets (temperature), plus an optional hard-label loss",
    )
    register(
        "mmfuse/masked_lm",
        builder="mmfuse_plugins.tasks.masked_lm:build_masked_lm",
        config=MaskedLMConfig,
        description="self-supervised masked language modelling on a text_hf encoder (library MLM head and masking)",
        aliases=("mlm",),
    )
    register(
        "mmfuse/masked_features",
        builder="mmfuse_plugins.tasks.masked_features:build_masked_features",
        config=MaskedFeaturesConfig,
        description="self-supervised masked-feature reconstruction on an image, audio or video encoder (MaskFeat-style)",
    )
    register(
        "mmfuse/extractive_qa",
        builder="mmfuse_plugins.tasks.extractive_qa:build_extractive_qa",
        config=ExtractiveQAConfig,
        description="extractive QA: start/end span over an encoder's windows of context tokens; SQuAD EM / F1",
        aliases=("qa",),
    )
    register(
        "mmfuse/token_classification",
        builder="mmfuse_plugins.tasks.token_classification:build_token_classification",
        config=TokenClassificationConfig,
        description="tagging: one label per word (BIO), aligned to word pieces; entity-level F1",
        aliases=("tagging",),
    )
    register(
        "mmfuse/generation",
        builder="mmfuse_plugins.tasks.generation:build_generation",
        config=GenerationConfig,
        description="text generation by a causal LM conditioned on a prefix from the fused model; BLEU, ROUGE-L, perplexity",
        aliases=("captioning",),
    )
