"""Auxiliary unimodal heads: the loss is the hand-computed sum, masked to the rows that have each
modality; absent rows never matter; detach makes them probes; saving drops or keeps them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfuse.balance.unimodal import FusedOutputs, UnimodalMetrics, for_saving
from mmfuse.recipe import RecipeError
from tests.balance import tiny


def test_loss_is_the_fused_loss_plus_weighted_masked_head_losses_by_hand():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {"weight": 0.3}}, fusion={"dropout": 0.0})).eval()
    batch = tiny.batch()
    outputs = model(batch)
    assert isinstance(outputs, FusedOutputs) and list(outputs) == ["label"]
    total, losses = model.compute_loss(outputs, batch["targets"])

    target = batch["targets"]["label"]
    expected = F.cross_entropy(outputs["label"], target)
    for name in ("left", "right"):
        rows = batch["present"][name]
        pooled = model.encoders[name](batch["inputs"][name]).pooled[rows]
        logits = model.unimodal_heads.heads["label"][name].head(pooled)
        by_hand = F.cross_entropy(logits, target[rows])
        torch.testing.assert_close(losses[f"label/{name}"], by_hand)
        expected = expected + 0.3 * by_hand
    torch.testing.assert_close(total, expected)
    assert set(losses) == {"label", "label/left", "label/right"}


def test_absent_rows_never_reach_the_auxiliary_loss():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}})).eval()
    batch = tiny.batch()
    _, clean = model.compute_loss(model(batch), batch["targets"])
    poisoned = tiny.batch()
    poisoned["inputs"]["left"]["values"][~poisoned["present"]["left"]] = float("nan")
    _, losses = model.compute_loss(model(poisoned), poisoned["targets"])
    torch.testing.assert_close(losses["label/left"], clean["label/left"])
    assert torch.isfinite(losses["label"])


def test_no_row_with_the_modality_gives_a_zero_differentiable_loss():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}})).train()
    batch = tiny.batch(size=4, present={"left": [False] * 4, "right": [True] * 4})
    total, losses = model.compute_loss(model(batch), batch["targets"])
    assert losses["label/left"].item() == 0.0
    total.backward()
    assert model.unimodal_heads.heads["label"]["right"].head[1].weight.grad is not None


def test_heads_train_with_the_encoders_unless_detached():
    batch = tiny.batch()

    def encoder_grad(task: dict) -> torch.Tensor:
        model = tiny.model(tiny.recipe(task=task, fusion={"dropout": 0.0}), seed=4).eval()
        total, _ = model.compute_loss(model(batch), batch["targets"])
        total.backward()
        head = getattr(model, "unimodal_heads", None)
        if head is not None:
            assert head.heads["label"]["left"].head[1].weight.grad.abs().sum() > 0
        return model.encoders["left"].layers[0][0].weight.grad.clone()

    plain = encoder_grad({})
    attached = encoder_grad({"unimodal_aux": {"weight": 0.5}})
    probe = encoder_grad({"unimodal_aux": {"weight": 0.5, "detach": True}})
    assert not torch.allclose(attached, plain)
    torch.testing.assert_close(probe, plain)


def test_training_forwards_record_the_true_class_confidence():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}})).train()
    batch = tiny.batch()
    outputs = model(batch)
    model.compute_loss(outputs, batch["targets"])
    scores = model.unimodal_heads.take_scores("label")
    target = batch["targets"]["label"]
    for name in ("left", "right"):
        rows = batch["present"][name]
        probabilities = outputs.unimodal[("label", name)].outputs[rows].softmax(-1)
        expected = probabilities.gather(1, target[rows].unsqueeze(1)).sum()
        torch.testing.assert_close(scores[name][0], expected.detach())
        assert scores[name][1].item() == rows.sum().item()
    assert model.unimodal_heads.take_scores("label") == {}, "scores are reset when taken"
    model.eval()
    model.compute_loss(model(batch), batch["targets"])
    assert model.unimodal_heads.take_scores("label") == {}, "evaluation must not record"


def test_metrics_cover_only_rows_with_the_modality():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}})).eval()
    batch = tiny.batch()
    outputs = model(batch)
    metrics = UnimodalMetrics.of(model, torch.device("cpu"))
    metrics.update(outputs, batch["targets"])
    result = metrics.compute("val")
    target = batch["targets"]["label"]
    rows = batch["present"]["right"]
    predicted = outputs.unimodal[("label", "right")].outputs[rows].argmax(-1)
    assert result["val/label/right/accuracy"] == pytest.approx((predicted == target[rows]).float().mean().item())
    assert {"val/label/left/accuracy", "val/label/left/f1"} <= set(result)


@pytest.mark.parametrize("keep", [False, True])
def test_saving_drops_or_keeps_the_heads(keep):
    recipe = tiny.recipe(task={"unimodal_aux": {"weight": 0.3, "keep_at_save": keep}})
    model = tiny.model(recipe)
    saved_model, saved_recipe = for_saving(model, recipe)
    keys = [k for k in saved_model.state_dict() if k.startswith("unimodal_heads.")]
    assert bool(keys) is keep
    assert (saved_recipe.tasks["label"].unimodal_aux is not None) is keep
    assert model.unimodal_heads is not None and recipe.tasks["label"].unimodal_aux is not None, "original changed"
    assert saved_model.encoders is model.encoders


def test_a_task_without_targets_cannot_have_unimodal_heads():
    raw_task = {"type": "mmfuse/contrastive", "encoders": ["left", "right"], "unimodal_aux": {}}
    recipe = tiny.recipe()
    from mmfuse.recipe import parse_recipe

    raw = recipe.to_dict()
    raw["tasks"] = {"align": raw_task}
    with pytest.raises(ValueError, match=r"tasks\.align\.unimodal_aux.*no target column"):
        tiny.model(parse_recipe(raw))
    with pytest.raises(RecipeError, match=r"unimodal_aux"):
        tiny.recipe(task={"unimodal_aux": {"weight": -1}})


@pytest.mark.parametrize("from_recipe", [True, False])
def test_the_one_optimizer_trains_the_heads(from_recipe):
    """Every trainable parameter, the heads' included, is in exactly one group, and a step moves
    the heads (with and without a recipe's per-module settings)."""
    from mmfuse.engine.config import OptimizerConfig
    from mmfuse.optim import make_optimizer, param_groups

    recipe = tiny.recipe(task={"unimodal_aux": {"weight": 0.3}, "lr": 0.05})
    model = tiny.model(recipe)
    groups = param_groups(model, recipe if from_recipe else OptimizerConfig(lr=0.05))
    placed = [id(p) for group in groups for p in group["params"]]
    assert sorted(placed) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    unimodal = [g for g in groups if g["name"].startswith("tasks.label.unimodal")]
    assert unimodal and all(g["lr"] == 0.05 for g in unimodal)

    optimizer = make_optimizer(groups, OptimizerConfig(lr=0.05))
    head = model.unimodal_heads.heads["label"]["left"].head[1].weight
    before = head.detach().clone()
    batch = tiny.batch()
    model.train()
    model.compute_loss(model(batch), batch["targets"])[0].backward()
    optimizer.step()
    assert not torch.equal(head.detach(), before)
