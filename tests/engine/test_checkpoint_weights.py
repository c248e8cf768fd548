"""Checkpoints store weights the way a model folder does: any model that can be saved as a
model folder (tied weights, views of a shared buffer) can be checkpointed and resumed."""

from __future__ import annotations

import pytest
import torch

from mmfuse.engine.checkpoint import CheckpointError, load_model_weights, read_checkpoint, save_checkpoint
from mmfuse.engine.trainer import Trainer
from tests.engine.stop_after import StopAfter
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe, weights


def with_shared_tensors(model):
    """A mel-filterbank-like buffer, a non-contiguous view of it, and a weight tied across modules."""
    fusion = model.fusion
    fusion.register_buffer("filterbank", torch.arange(40.0).reshape(8, 5))
    fusion.register_buffer("band", fusion.filterbank[:, 1:3])  # shares storage, not contiguous
    tied = next(model.encoders["feats"].parameters())
    model.encoders["extra"].register_parameter("tied_copy", tied)
    return model


def test_checkpoint_round_trips_views_and_tied_weights(tmp_path):
    model = with_shared_tensors(tiny_model(tiny_recipe()))
    path = save_checkpoint(tmp_path, 3, model, {"format": 1}, {"epoch": 0})
    checkpoint = read_checkpoint(path)
    assert "encoders.extra.tied_copy" in checkpoint.meta["aliases"]

    fresh = with_shared_tensors(tiny_model(tiny_recipe(), seed=5))
    fresh.fusion.filterbank.zero_()
    load_model_weights(fresh, checkpoint.weights, path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.fusion.band.data_ptr() != fresh.fusion.filterbank.data_ptr()  # still a view, at an offset
    assert torch.equal(fresh.fusion.band, fresh.fusion.filterbank[:, 1:3])
    assert fresh.encoders["extra"].tied_copy is next(fresh.encoders["feats"].parameters())


def test_fit_and_resume_a_model_with_views_and_tied_weights(tmp_path):
    recipe = tiny_recipe(trainer={"epochs": 2, "progress": "off", "tensorboard": "off"})

    def trainer(run_dir, seed=0, callbacks=()):
        model = with_shared_tensors(tiny_model(recipe, seed=seed))
        return Trainer(model, recipe, SyntheticRows(24), TinyCollate(model), run_dir=run_dir, callbacks=list(callbacks))

    full = trainer(tmp_path / "full")
    full.fit()
    trainer(tmp_path / "cut", callbacks=[StopAfter(4)]).fit()
    resumed = trainer(tmp_path / "cut", seed=7)
    result = resumed.fit(resume=tmp_path / "cut")
    assert result.global_step == full.global_step == 12
    expected = weights(full.model)
    for name, tensor in weights(resumed.model).items():
        assert torch.equal(tensor, expected[name]), name


def test_resuming_into_a_different_model_lists_every_mismatch(tmp_path):
    path = save_checkpoint(tmp_path, 3, tiny_model(tiny_recipe()), {"format": 1}, {"epoch": 0})
    other = tiny_model(tiny_recipe(encoders={"feats": {"type": "mmfuse/vector", "input_dim": 6, "output_dim": 4}}))
    with pytest.raises(CheckpointError, match="cannot resume from") as caught:
        load_model_weights(other, read_checkpoint(path).weights, path)
    assert "shape mismatches" in str(caught.value) and "encoders.feats" in str(caught.value)
