"""The conformance kit catches real defects: deliberately broken components are each reported
with the component's name, the check's name and a message that says what is wrong."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from mmfuse import hookimpl
from mmfuse.contracts import Encoder, EncoderOutput, FusionHead, Preprocessor, SampleError, Task, masked_mean
from mmfuse.testing import ConformanceError, check_encoder, check_fusion, check_task, conformance_cases


# --------------------------------------------------------------------------- a correct encoder


class WordsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab: int = 50
    dim: int = 8


class WordsPreprocessor(Preprocessor):
    """Words -> hashed ids; collate pads with id 0 (padding)."""

    modality = "text"

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, value):
        if not isinstance(value, str) or not value.split():
            raise SampleError(f"expected a non-empty string, got {value!r}")
        return {"ids": torch.tensor([1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in value.split()])}

    def collate(self, items):
        rows = [torch.ones(1, dtype=torch.long) if item is None else item["ids"] for item in items]
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        return {"ids": ids}


class WordsEncoder(Encoder):
    modality = "text"

    def __init__(self, config: WordsConfig) -> None:
        super().__init__()
        self.config = config
        self.output_dim = config.dim
        self.embed = nn.Embedding(config.vocab, config.dim)
        self.mix = nn.Linear(config.dim, config.dim)

    def tokens(self, inputs):
        ids = inputs["ids"]
        return torch.tanh(self.mix(self.embed(ids))), ids > 0

    def forward(self, inputs):
        tokens, mask = self.tokens(inputs)
        return EncoderOutput(tokens, mask, masked_mean(tokens, mask))

    def preprocessor(self):
        return WordsPreprocessor(self.config.vocab)

    def layer_groups(self):
        return [self.embed, self.mix]


# --------------------------------------------------------------------------- broken encoders


class UnusedParameterEncoder(WordsEncoder):
    def __init__(self, config):
        super().__init__(config)
        self.forgotten = nn.Linear(config.dim, config.dim)  # never called in forward


class ShapeLieEncoder(WordsEncoder):
    def __init__(self, config):
        super().__init__(config)
        self.output_dim = config.dim + 4  # claims a width it does not produce


class PaddingLeakEncoder(WordsEncoder):
    def forward(self, inputs):
        tokens, mask = self.tokens(inputs)
        return EncoderOutput(tokens, mask, tokens.mean(1))  # averages the padding in


class MaskLieEncoder(WordsEncoder):
    def forward(self, inputs):
        tokens, _ = self.tokens(inputs)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)  # marks padding as real
        return EncoderOutput(tokens, mask, masked_mean(tokens, mask))


class AlwaysDropoutEncoder(WordsEncoder):
    def forward(self, inputs):
        out = super().forward(inputs)
        return EncoderOutput(out.tokens, out.mask, F.dropout(out.pooled, 0.5, training=True))


class ForeignLayersEncoder(WordsEncoder):
    def layer_groups(self):
        return [self.embed, nn.Linear(2, 2)]  # a module that is not part of the encoder


class SelfTrainingNormEncoder(WordsEncoder):
    """Switches its BatchNorm to train mode inside forward: frozen, its statistics still drift."""

    def __init__(self, config):
        super().__init__(config)
        self.norm = nn.BatchNorm1d(config.dim)

    def forward(self, inputs):
        out = super().forward(inputs)
        self.norm.train()
        return EncoderOutput(out.tokens, out.mask, self.norm(out.pooled))


class BlankMissingRowPreprocessor(WordsPreprocessor):
    def collate(self, items):
        rows = [torch.zeros(1, dtype=torch.long) if item is None else item["ids"] for item in items]  # padding only
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        return {"ids": ids}


class BlankMissingRowEncoder(WordsEncoder):
    """Its collate gives a missing (None) row no real token (docs/encoders.md forbids it)."""

    def preprocessor(self):
        return BlankMissingRowPreprocessor(self.config.vocab)


class DriftingConfig(WordsConfig):
    @field_validator("dim")
    @classmethod
    def _grow(cls, value: int) -> int:
        return value + 1  # every validation changes the value: a saved config never reloads as it was


class DriftingEncoder(WordsEncoder):
    pass


# --------------------------------------------------------------------------- broken fusion heads


class MaskIgnoringFusion(FusionHead):
    """Averages projected pooled vectors of every modality, present or not."""

    def __init__(self, config, input_dims):
        super().__init__()
        self.names = sorted(input_dims)
        self.projections = nn.ModuleDict({n: nn.Linear(d, 4) for n, d in input_dims.items()})
        self.output_dim = 4

    def forward(self, features, present):
        return torch.stack([self.projections[n](features[n].pooled) for n in self.names if n in features]).mean(0)


class TokenMaskIgnoringFusion(MaskIgnoringFusion):
    """Respects presence, but averages tokens over padding too."""

    def forward(self, features, present):
        parts = []
        for name in self.names:
            if name in features:
                vector = self.projections[name](features[name].tokens.mean(1))
                parts.append(vector * present[name].unsqueeze(-1))
        return torch.stack(parts).sum(0)


class ProjectsBeforeMaskingFusion(FusionHead):
    """The v0.1 acme/max: projects every pooled vector, then masks the absent ones. The output is
    right, but a NaN in an absent row reaches the projection's weight gradient (0 * NaN)."""

    def __init__(self, config, input_dims):
        super().__init__()
        self.names = sorted(input_dims)
        self.projections = nn.ModuleDict({n: nn.Linear(d, 4) for n, d in input_dims.items()})
        self.output_dim = 4

    def forward(self, features, present):
        projected = torch.stack([self.projections[n](features[n].pooled) for n in self.names if n in features], 1)
        keep = torch.stack([present[n] for n in self.names if n in features], 1).unsqueeze(-1)
        pooled = projected.masked_fill(~keep, torch.finfo(projected.dtype).min).amax(1)
        return torch.where(keep.any(1), pooled, torch.zeros_like(pooled))


# --------------------------------------------------------------------------- broken tasks


class ScoreTask(Task):
    def __init__(self, config, fused_dim, encoder_dims):
        super().__init__()
        self.head = nn.Linear(fused_dim, 1)

    def forward(self, fused, features, present):
        return self.head(fused)

    def encode_target(self, value):
        return torch.tensor([float(value)])

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def build_metrics(self):
        import torchmetrics

        return torchmetrics.MetricCollection({"mae": torchmetrics.MeanAbsoluteError()})

    def predict(self, outputs):
        return outputs.squeeze(-1).tolist()


class UnusedHeadTask(ScoreTask):
    def __init__(self, config, fused_dim, encoder_dims):
        super().__init__(config, fused_dim, encoder_dims)
        self.second_head = nn.Linear(fused_dim, 1)  # built but never used


class PerSampleLossTask(ScoreTask):
    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets, reduction="none")  # not reduced to a scalar


class LabelledTask(ScoreTask):
    """Three classes named in ``self.labels``."""

    def __init__(self, config, fused_dim, encoder_dims):
        super().__init__(config, fused_dim, encoder_dims)
        self.labels = ["a", "b", "c"]
        self.head = nn.Linear(fused_dim, 3)

    def encode_target(self, value):
        return torch.tensor(int(float(value)) % 3)

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def build_metrics(self):
        import torchmetrics

        return torchmetrics.MetricCollection({"accuracy": torchmetrics.classification.MulticlassAccuracy(3)})

    def predict(self, outputs):
        return [self.labels[i] for i in outputs.argmax(-1).tolist()]

    def probabilities(self, outputs):
        return outputs.softmax(-1)


class UndeclaredLabelsTask(LabelledTask):
    pass  # label_names() stays None: labels.json, exports and predict_proba would get no names


class MiscountedLabelsTask(LabelledTask):
    def label_names(self):
        return ["a", "b"]  # three probability columns


class DeclaredLabelsTask(LabelledTask):
    def label_names(self):
        return list(self.labels)


class DefectsPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register):
        register("test/words", builder=WordsEncoder, config=WordsConfig)
        register("test/unused_param", builder=UnusedParameterEncoder, config=WordsConfig)
        register("test/shape_lie", builder=ShapeLieEncoder, config=WordsConfig)
        register("test/padding_leak", builder=PaddingLeakEncoder, config=WordsConfig)
        register("test/mask_lie", builder=MaskLieEncoder, config=WordsConfig)
        register("test/always_dropout", builder=AlwaysDropoutEncoder, config=WordsConfig)
        register("test/foreign_layers", builder=ForeignLayersEncoder, config=WordsConfig)
        register("test/drifting_config", builder=DriftingEncoder, config=DriftingConfig)
        register("test/self_training_norm", builder=SelfTrainingNormEncoder, config=WordsConfig)
        register("test/blank_missing_row", builder=BlankMissingRowEncoder, config=WordsConfig)

    @hookimpl
    def mmfuse_register_fusions(self, register):
        register("test/mask_ignoring", builder=MaskIgnoringFusion)
        register("test/token_mask_ignoring", builder=TokenMaskIgnoringFusion)
        register("test/projects_before_masking", builder=ProjectsBeforeMaskingFusion)

    @hookimpl
    def mmfuse_register_tasks(self, register):
        register("test/score", builder=ScoreTask)
        register("test/unused_head", builder=UnusedHeadTask)
        register("test/per_sample_loss", builder=PerSampleLossTask)
        register("test/undeclared_labels", builder=UndeclaredLabelsTask)
        register("test/miscounted_labels", builder=MiscountedLabelsTask)
        register("test/declared_labels", builder=DeclaredLabelsTask)


CHECKS = {"encoder": check_encoder, "fusion": check_fusion, "task": check_task}

DEFECTS = [
    # kind, component, the check that must fail, words the message must contain
    ("encoder", "test/unused_param", "gradients", ["no gradient", "forgotten.weight", "forgotten.bias"]),
    ("encoder", "test/shape_lie", "forward", ["pooled has shape (3, 8)", "expected [3, 12]", "output_dim=12"]),
    ("encoder", "test/padding_leak", "padding_invariance", ["pooled output of sample", "padded batch"]),
    ("encoder", "test/mask_lie", "padding_invariance", ["real tokens alone", "mask must mark padding"]),
    ("encoder", "test/always_dropout", "determinism", ["two eval-mode forwards"]),
    ("encoder", "test/foreign_layers", "frozen", ["layer_groups()", "not part of the encoder", "1 (Linear)"]),
    ("encoder", "test/drifting_config", "config_roundtrip", ["model_dump", "dim=8) became", "dim=9)"]),
    ("encoder", "test/self_training_norm", "frozen", ["changed buffers of the frozen encoder", "norm.running_mean"]),
    ("encoder", "test/blank_missing_row", "missing_row", ["missing (None) row no real token", "at least one real token"]),
    ("fusion", "test/mask_ignoring", "missing_modality", ["samples [1, 3]", "absent", "present=False"]),
    ("fusion", "test/projects_before_masking", "garbage_in_absent_and_padding", ["non-finite gradients", "NaN", "projections.right.weight", "torch.where"]),
    ("fusion", "test/token_mask_ignoring", "token_mask", ["padded positions"]),
    ("task", "test/unused_head", "loss_and_gradients", ["no gradient from the loss", "second_head.weight"]),
    ("task", "test/per_sample_loss", "loss_and_gradients", ["0-dim tensor"]),
    ("task", "test/undeclared_labels", "label_names", ["keeps labels in .labels", "label_names() returns None"]),
    ("task", "test/miscounted_labels", "label_names", ["2 labels but probabilities() has 3 columns"]),
]


@pytest.fixture
def defects(mmfuse_registry):
    return mmfuse_registry(("defects", DefectsPlugin()))


@pytest.mark.parametrize("kind, name, check, words", DEFECTS, ids=[d[1] for d in DEFECTS])
def test_broken_component_is_reported_by_name_and_check(defects, kind, name, check, words):
    with pytest.raises(ConformanceError) as caught:
        CHECKS[kind](name, registry=defects)
    error = caught.value
    assert check in error.checks, str(error)
    failure = next(f for f in error.failures if f.check == check)
    line = str(failure)
    assert line.startswith(f"{kind} '{name}' [{check}]: ")
    for word in words:
        assert word in line, line
    assert line in str(error)  # the raised message lists it


def test_correct_components_pass_every_check(defects):
    report = check_encoder("test/words", registry=defects)
    assert report.passed == [
        "config_roundtrip", "build", "preprocess", "forward", "gradients", "frozen",
        "padding_invariance", "missing_row", "determinism", "bf16_autocast", "save_load",
    ]
    assert check_task("test/score", registry=defects).skipped == {}
    assert "label_names" in check_task("test/declared_labels", targets=[0, 1, 2, 1], registry=defects).passed


def test_only_the_defective_checks_fail(defects):
    with pytest.raises(ConformanceError) as caught:
        check_encoder("test/unused_param", registry=defects)
    assert caught.value.checks == ["gradients"]
    assert "frozen" in caught.value.passed and "save_load" in caught.value.passed
    assert str(caught.value).startswith("encoder 'test/unused_param' failed 1 of 11 conformance checks:")


def test_a_config_that_does_not_validate_names_the_component_and_the_fix(defects):
    with pytest.raises(ConformanceError) as caught:
        check_encoder("test/words", {"vocab": "many"}, registry=defects)
    assert caught.value.checks == ["config"]
    assert "encoder 'test/words' [config]" in str(caught.value) and "Pass config={...}" in str(caught.value)


def test_conformance_cases_select_by_namespace_and_reject_unknown_names(isolated_plugin_manager):
    isolated_plugin_manager.register(DefectsPlugin(), "defects")
    defects = isolated_plugin_manager.build_registry()
    cases = conformance_cases(["task"], namespace="test", registry=defects)
    assert [case.id for case in cases] == [
        "task:test/declared_labels", "task:test/miscounted_labels", "task:test/per_sample_loss",
        "task:test/score", "task:test/undeclared_labels", "task:test/unused_head",
    ]
    with pytest.raises(ConformanceError, match="task 'test/unused_head' failed"):
        cases[-1].check()
    with pytest.raises(ValueError, match=r"no registered encoder named \['test/wrods'\]"):
        conformance_cases(["encoder"], ["test/wrods"], registry=defects)
