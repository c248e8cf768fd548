"""Assembly of one FusedModel from a recipe, and ONE optimizer over it."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from mmfuse import hookimpl
from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor
from mmfuse.model import FusedModel, build_fused_model
from mmfuse.optim import build_optimizer
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe


class CountsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab: int = 10
    dim: int = 6


class CountsEncoder(Encoder):
    """An encoder defined in the test and registered by a test-local plugin."""

    modality = "tokens"

    def __init__(self, config: CountsConfig) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(config.vocab, config.dim)
        self.output_dim = config.dim

    def forward(self, inputs):
        tokens = self.embed(inputs["ids"])
        mask = inputs["ids"] > 0
        pooled = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return EncoderOutput(tokens, mask, pooled)

    def preprocessor(self) -> Preprocessor:
        raise NotImplementedError


class LocalPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register):
        register("local/counts", builder=CountsEncoder, config=CountsConfig)


def recipe(**changes):
    raw = {
        "encoders": {
            "words": {"type": "counts", "dim": 5},
            "feats": {"type": "vector", "input_dim": 3, "lr": 0.05, "weight_decay": 0.2},
            "frozen": {"type": "vector", "input_dim": 2, "freeze": True},
        },
        "fusion": {"type": "concat", "output_dim": 8},
        "tasks": {
            "label": {"type": "classification", "labels": ["x", "y", "z"]},
            "score": {"type": "regression", "weight": 0.5},
        },
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    }
    raw.update(changes)
    registry = load_registry([("local", LocalPlugin())])
    return parse_recipe(raw, registry), registry


def batch(size: int = 4):
    return {
        "inputs": {
            "words": {"ids": torch.randint(0, 10, (size, 7))},
            "feats": {"values": torch.randn(size, 3)},
            "frozen": {"values": torch.randn(size, 2)},
        },
        "present": {
            "words": torch.ones(size, dtype=torch.bool),
            "feats": torch.tensor([True, False] * (size // 2)),
            "frozen": torch.ones(size, dtype=torch.bool),
        },
        "targets": {"label": torch.randint(0, 3, (size,)), "score": torch.randn(size, 1)},
    }


def test_recipe_uses_encoder_from_test_plugin_and_forward_backward_works():
    r, registry = recipe()
    model = build_fused_model(r, registry)
    assert isinstance(model, FusedModel)
    assert isinstance(model.encoders["words"], CountsEncoder)
    b = batch()
    outputs = model(b)
    assert outputs["label"].shape == (4, 3) and outputs["score"].shape == (4, 1)
    total, parts = model.compute_loss(outputs, b["targets"])
    assert torch.allclose(total, parts["label"] + 0.5 * parts["score"])
    total.backward()
    assert model.encoders["words"].embed.weight.grad is not None
    assert all(p.grad is None for p in model.encoders["frozen"].parameters())


def test_optimizer_covers_every_trainable_parameter_exactly_once():
    r, registry = recipe()
    model = build_fused_model(r, registry)
    optimizer = build_optimizer(model, r)
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_optimizer) == sorted(trainable)
    assert len(in_optimizer) == len(set(in_optimizer))
    frozen = {id(p) for p in model.encoders["frozen"].parameters()}
    assert frozen and not frozen & set(in_optimizer)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["encoders.feats"]["lr"] == 0.05 and groups["encoders.feats"]["weight_decay"] == 0.2
    assert groups["encoders.feats.no_decay"]["weight_decay"] == 0.0
    assert groups["fusion"]["lr"] == 1e-3 and groups["fusion"]["weight_decay"] == 0.01


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "adadelta"])
def test_every_optimizer_steps(name):
    r, registry = recipe(optimizer={"name": name, "lr": 0.1})
    model = build_fused_model(r, registry)
    optimizer = build_optimizer(model, r)
    assert type(optimizer).__name__.lower() == name
    before = model.fusion.mlp[-1].weight.detach().clone()
    b = batch()
    model.compute_loss(model(b), b["targets"])[0].backward()
    optimizer.step()
    assert not torch.equal(before, model.fusion.mlp[-1].weight)


def test_trainable_layers_unfreezes_only_the_last_groups():
    r, registry = recipe(
        encoders={
            "feats": {"type": "vector", "input_dim": 3, "num_layers": 3, "layer_norm": True, "trainable_layers": 1}
        }
    )
    model = build_fused_model(r, registry)
    encoder = model.encoders["feats"]
    assert all(p.requires_grad for p in encoder.layers[-1].parameters())
    assert not any(p.requires_grad for p in encoder.layers[0].parameters())
    assert not any(p.requires_grad for p in encoder.norm.parameters())


def test_all_frozen_gives_a_clear_error():
    r, registry = recipe(
        encoders={"feats": {"type": "vector", "input_dim": 3, "freeze": True}},
    )
    model = build_fused_model(r, registry)
    model.fusion.requires_grad_(False)
    model.tasks.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, r)


def test_uncertainty_weighting_is_learned():
    r, registry = recipe(trainer={"loss_weighting": "uncertainty"})
    model = build_fused_model(r, registry)
    optimizer = build_optimizer(model, r)
    assert any(g["name"].startswith("loss_weighting") for g in optimizer.param_groups)
    b = batch()
    model.compute_loss(model(b), b["targets"])[0].backward()
    assert model.loss_weighting.log_vars.grad is not None


class NormedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = 4


class NormedEncoder(Encoder):
    """Two blocks with BatchNorm: running statistics move in train mode."""

    modality = "vector"

    def __init__(self, config: NormedConfig) -> None:
        super().__init__()
        self.first = torch.nn.Sequential(torch.nn.Linear(config.dim, 6), torch.nn.BatchNorm1d(6))
        self.second = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6))
        self.output_dim = 6

    def forward(self, inputs):
        pooled = self.second(self.first(inputs["values"]))
        return EncoderOutput(pooled.unsqueeze(1), torch.ones(pooled.shape[0], 1, dtype=torch.bool), pooled)

    def layer_groups(self):
        return [self.first, self.second]

    def preprocessor(self) -> Preprocessor:
        raise NotImplementedError


class NormedPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register):
        register("local/normed", builder=NormedEncoder, config=NormedConfig)


def normed_model(**slot):
    raw = {
        "encoders": {"feats": {"type": "normed", **slot}},
        "fusion": {"type": "concat", "output_dim": 4},
        "tasks": {"label": {"type": "classification", "labels": ["x", "y"]}},
    }
    registry = load_registry([("normed", NormedPlugin())])
    return build_fused_model(parse_recipe(raw, registry), registry)


def run_batch(model):
    model.train()
    model({"inputs": {"feats": {"values": torch.randn(8, 4) * 5 + 3}}})


def test_frozen_encoder_keeps_its_batchnorm_statistics_in_train_mode():
    model = normed_model(freeze=True)
    encoder = model.encoders["feats"]
    before = encoder.first[1].running_mean.clone()
    run_batch(model)
    assert model.training and model.fusion.training and not encoder.training
    assert torch.equal(encoder.first[1].running_mean, before)


def test_only_still_frozen_layer_groups_stay_in_eval_mode():
    model = normed_model(trainable_layers=1)
    encoder = model.encoders["feats"]
    first, second = encoder.first[1].running_mean.clone(), encoder.second[1].running_mean.clone()
    run_batch(model)
    assert torch.equal(encoder.first[1].running_mean, first)  # frozen block: statistics kept
    assert not torch.equal(encoder.second[1].running_mean, second)  # trainable block: updated
    encoder.first.requires_grad_(True)  # as a stage unfreezing it would
    run_batch(model)
    assert not torch.equal(encoder.first[1].running_mean, first)
