"""The best checkpoint's weights are restored after a fit; a resume with changed settings is
refused (or forced, with a warning); interrupted writes leave nothing behind after a restart."""

from __future__ import annotations

import json

import pytest
import torch

from mmfuse.engine.checkpoint import CheckpointError, read_checkpoint
from mmfuse.engine.run_settings import ResumeSettingsWarning
from tests.engine.stop_after import StopAfter
from tests.engine.test_training import fit
from tests.engine.tiny import SyntheticRows, tiny_recipe, weights

QUIET = {"progress": "off", "tensorboard": "off"}


def best_recipe(**trainer):
    # monitoring the *largest* validation loss makes an early evaluation the best one
    return tiny_recipe(
        optimizer={"name": "adamw", "lr": 0.05},
        trainer={**QUIET, "epochs": 4, "checkpoint": {"monitor": "val/loss", "mode": "max", "keep_last": 1}, **trainer},
    )


def test_the_best_checkpoint_is_restored_after_the_fit(tmp_path, capsys):
    trainer, result = fit(best_recipe(), tmp_path, val=SyntheticRows(8, seed=2))
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["step"] != result.global_step, "the setup should make an early evaluation the best"
    assert result.restored_step == best["step"]
    stored = read_checkpoint(tmp_path / "checkpoints" / best["name"]).weights
    assert all(torch.equal(tensor, stored[name]) for name, tensor in weights(trainer.model).items())
    assert f"restored the best weights: step {best['step']}" in capsys.readouterr().out
    # the last checkpoint still holds the last weights, so the run can be continued
    last = read_checkpoint(result.last_checkpoint)
    assert last.meta["step"] == result.global_step
    assert any(not torch.equal(last.weights[name], stored[name]) for name in stored)


def test_restore_best_false_keeps_the_last_weights(tmp_path):
    trainer, result = fit(best_recipe(restore_best=False), tmp_path, val=SyntheticRows(8, seed=2))
    assert result.restored_step is None
    last = read_checkpoint(result.last_checkpoint).weights
    assert all(torch.equal(tensor, last[name]) for name, tensor in weights(trainer.model).items())


def cut_run(tmp_path):
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 2})
    fit(recipe, tmp_path, callbacks=[StopAfter(3)])
    return recipe


def test_resuming_with_a_changed_batch_size_or_seed_is_refused_unless_forced(tmp_path):
    cut_run(tmp_path)
    changed = tiny_recipe("data.batch_size=8", "seed=4", trainer={**QUIET, "epochs": 2})
    with pytest.raises(CheckpointError, match=r"seed: 3 -> 4; batch_size: 4 -> 8.*--resume-force"):
        fit(changed, tmp_path, resume=tmp_path)
    with pytest.warns(ResumeSettingsWarning, match="will not match an uninterrupted run"):
        trainer, result = fit(changed, tmp_path, resume=tmp_path, resume_force=True)
    # 3 steps of 4 rows = 12 rows seen: the forced resume continues after 1 batch of 8 (of 4)
    assert result.global_step == 3 + 3 + 4 and result.stop_reason == "completed"


def test_resuming_with_changed_encoder_settings_is_refused(tmp_path):
    # an encoder's settings include its preprocessing (image size, max_length...): the inputs would differ
    cut_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"encoders.feats.dropout: 0.0 -> 0.1\)"):
        fit(tiny_recipe("encoders.feats.dropout=0.1", trainer={**QUIET, "epochs": 2}), tmp_path, resume=tmp_path)
    # an encoder's own lr is not one of them
    _, result = fit(tiny_recipe("encoders.feats.lr=0.5", trainer={**QUIET, "epochs": 2}), tmp_path, resume=tmp_path)
    assert result.global_step == 16


def test_a_changed_learning_rate_is_accepted_with_a_warning(tmp_path):
    cut_run(tmp_path)
    with pytest.warns(ResumeSettingsWarning, match="optimizer"):
        _, result = fit(tiny_recipe("optimizer.lr=0.02", trainer={**QUIET, "epochs": 2}), tmp_path, resume=tmp_path)
    assert result.global_step == 16


def test_leftovers_of_interrupted_writes_are_removed_on_restart(tmp_path, capsys):
    recipe = cut_run(tmp_path)
    leftovers = [
        tmp_path / "checkpoints" / ".tmp-step-00000004-999",
        tmp_path / "checkpoints" / ".step-00000003.old-999",
        tmp_path / ".model.x1y2.tmp",
        tmp_path / ".model.old-999",
    ]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    fit(recipe, tmp_path, resume=tmp_path)
    assert not any(folder.exists() for folder in leftovers)
    assert "left by an interrupted write" in capsys.readouterr().out
