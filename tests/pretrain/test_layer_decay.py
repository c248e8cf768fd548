"""optimizer.lr_layer_decay: each encoder layer group trains at lr * decay ** (depth from the top),
every trainable parameter sits in exactly one group, heads keep their lr, the schedule keeps ratios."""

from __future__ import annotations

import pytest
import torch

from mmfuse.engine.config import SchedulerConfig
from mmfuse.engine.schedule import LRSchedule
from mmfuse.model import build_fused_model
from mmfuse.optim import build_optimizer
from mmfuse.recipe import RecipeError, parse_recipe
from mmfuse.testing.tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", num_layers=3)


def recipe(bert, decay=None, text_lr=None):
    text = {"type": "text_hf", "model": str(bert), "max_length": 16}
    if text_lr:
        text["lr"] = text_lr
    return parse_recipe({
        "encoders": {"text": text, "feats": {"type": "vector", "input_dim": 3, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
        "optimizer": {"lr": 0.01, **({"lr_layer_decay": decay} if decay else {})},
    })


def test_layer_groups_get_geometrically_decayed_lr(bert):
    plan = recipe(bert, decay=0.5, text_lr=1e-3)
    torch.manual_seed(0)
    model = build_fused_model(plan)
    optimizer = build_optimizer(model, plan)
    layers = model.encoders["text"].layer_groups()
    count = len(layers)
    assert count >= 4  # embeddings + 3 transformer layers (+ what follows them)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for index, layer in enumerate(layers):
        for param in layer.parameters():
            assert lr_of[id(param)] == pytest.approx(1e-3 * 0.5 ** (count - 1 - index))
    embeddings = model.encoders["text"].model.embeddings.word_embeddings.weight
    assert lr_of[id(embeddings)] == pytest.approx(1e-3 * 0.5 ** (count - 1))
    for name in ("fusion", "tasks"):  # the heads keep their lr
        module = model.get_submodule(name)
        assert all(lr_of[id(p)] == pytest.approx(0.01) for p in module.parameters())
    every = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters() if p.requires_grad) and len(every) == len(set(every))
    assert {g["name"] for g in optimizer.param_groups} >= {"encoders.text/layer0", f"encoders.text/layer{count - 1}"}

    schedule = LRSchedule(optimizer, SchedulerConfig(name="linear", warmup_steps=2), total_steps=10)
    for _ in range(3):
        schedule.step()
    ratio = lr_of[id(embeddings)] / 0.01
    now = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert now[id(embeddings)] / now[id(next(model.fusion.parameters()))] == pytest.approx(ratio)


def test_without_decay_groups_are_unchanged(bert):
    plan = recipe(bert)
    model = build_fused_model(plan)
    names = [g["name"] for g in build_optimizer(model, plan).param_groups]
    assert not any("/layer" in n for n in names) and "encoders.text" in names


def test_decay_must_be_in_zero_one(bert):
    with pytest.raises(RecipeError, match="optimizer.lr_layer_decay"):
        parse_recipe({
            "encoders": {"feats": {"type": "vector", "input_dim": 3}},
            "fusion": {"type": "concat"},
            "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
            "optimizer": {"lr_layer_decay": 1.5},
        })
