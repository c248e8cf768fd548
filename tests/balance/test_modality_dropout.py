"""Modality dropout: drops only present modalities, never every modality of a row (nor below
min_present), at the configured rate, only the configured encoders, and never in eval mode."""

from __future__ import annotations

import pytest
import torch

from mmfuse.balance.dropout import ModalityDropout
from mmfuse.recipe import RecipeError
from tests.balance import tiny


def random_presence(rows: int, modalities: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, modalities, generator=generator) < 0.7


@pytest.mark.parametrize("min_present", [1, 2])
@pytest.mark.parametrize("p", [0.3, 0.95])
def test_never_drops_below_min_present_and_only_drops_present_ones(p, min_present):
    torch.manual_seed(0)
    present = random_presence(4000, 3)
    present[:5] = False  # rows without any modality stay without
    dropout = ModalityDropout({"a": p, "b": p, "c": p}, min_present=min_present)
    kept = dropout.drop(present, dropout.probabilities)
    assert not (kept & ~present).any(), "a modality the row does not have was marked present"
    floor = present.sum(1).clamp(max=min_present)
    assert (kept.sum(1) >= floor).all(), "a row kept fewer modalities than min_present (or none)"
    assert (kept[present.sum(1) > 0].sum(1) >= 1).all()
    assert not kept[:5].any()
    assert (kept != present).any(), "nothing was dropped at all"


def test_drop_rate_matches_the_probability_after_restoring():
    torch.manual_seed(1)
    present = torch.ones(20000, 3, dtype=torch.bool)
    dropout = ModalityDropout({"a": 0.5, "b": 0.5, "c": 0.5}, min_present=1)
    kept = dropout.drop(present, dropout.probabilities).float()
    # each kept w.p. 1/2; when all three fall (1/8) one is restored: E[kept] = 1.5 + 1/8
    assert kept.sum(1).mean().item() == pytest.approx(1.625, abs=0.02)
    # the restored one is picked at random: every modality is kept equally often
    assert kept.mean(0).tolist() == pytest.approx([1.625 / 3] * 3, abs=0.02)


def test_per_encoder_probabilities_drop_only_the_named_encoder():
    recipe = tiny.recipe(fusion={"modality_dropout": {"p": {"left": 0.9}}})
    model = tiny.model(recipe).train()
    batch = tiny.batch(size=64, present={"left": [True] * 64, "right": [True] * 64})
    torch.manual_seed(0)
    dropped = model.modality_dropout(batch)
    assert dropped["present"]["right"].all()
    assert 0 < dropped["present"]["left"].sum() < 32
    assert batch["present"]["left"].all(), "the caller's batch was modified"


def test_off_in_eval_mode_and_in_the_model_forward():
    recipe = tiny.recipe(fusion={"modality_dropout": {"p": 0.9}})
    model = tiny.model(recipe)
    batch = tiny.batch(size=32)
    model.eval()
    assert model.modality_dropout(batch) is batch
    with torch.no_grad():
        first, second = model(batch)["label"], model(batch)["label"]
    torch.testing.assert_close(first, second)
    model.train()
    torch.manual_seed(3)
    masks = [model.modality_dropout(batch)["present"] for _ in range(5)]
    assert any(not torch.equal(m["left"], batch["present"]["left"]) for m in masks)


def test_the_forward_pass_sees_the_dropped_modality_as_absent():
    """In training mode, a row whose 'right' modality was dropped gives the output of that row
    with 'right' marked absent."""
    recipe = tiny.recipe(fusion={"modality_dropout": {"p": {"right": 0.5}}, "dropout": 0.0})
    model = tiny.model(recipe).train()
    batch = tiny.batch(size=16, present={"left": [True] * 16, "right": [True] * 16})
    torch.manual_seed(5)
    dropped = model.modality_dropout(batch)["present"]["right"]
    torch.manual_seed(5)
    trained = model(batch)["label"]
    absent = {**batch, "present": {**batch["present"], "right": dropped}}
    model.modality_dropout, saved = None, model.modality_dropout
    reference = model(absent)["label"]
    model.modality_dropout = saved
    assert (~dropped).any()
    torch.testing.assert_close(trained, reference)


def test_bad_settings_are_clear_errors():
    with pytest.raises(RecipeError, match=r"fusion\.modality_dropout"):
        tiny.recipe(fusion={"modality_dropout": {"p": 1.0}})
    with pytest.raises(RecipeError, match=r"fusion\.modality_dropout"):
        tiny.recipe(fusion={"modality_dropout": {"min_present": 0}})
    with pytest.raises(RecipeError, match=r"fusion\.modality_dropout\.p: names encoder 'lfet'.*Did you mean 'left'"):
        tiny.recipe(fusion={"modality_dropout": {"p": {"lfet": 0.2}}})
