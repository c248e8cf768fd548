"""Exact resume, checkpoint fallback, and SIGTERM handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmfuse.engine.checkpoint import find_resumable, list_checkpoints
from mmfuse.engine.trainer import Trainer
from tests.engine.stop_after import StopAfter
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe, weights

REPO = Path(__file__).resolve().parents[2]


def make_trainer(recipe, run_dir, callbacks=(), seed=0, val=True):
    model = tiny_model(recipe, seed=seed)
    val_data = SyntheticRows(12, seed=1) if val else None
    return Trainer(model, recipe, SyntheticRows(40), TinyCollate(model), val_dataset=val_data, run_dir=run_dir, callbacks=list(callbacks))


def resume_recipe():
    # dropout (RNG), warmup + cosine (schedule), accumulation, step-wise evaluation and best checkpoints
    return tiny_recipe(
        trainer={"epochs": 3, "grad_accum_steps": 2, "eval_every_steps": 3, "log_every_steps": 2,
                 "progress": "off", "tensorboard": "off", "early_stopping": {"patience": 10}},
        scheduler={"name": "cosine", "warmup_steps": 2},
    )


def test_kill_and_resume_is_bit_identical(tmp_path):
    recipe = resume_recipe()
    full = make_trainer(recipe, tmp_path / "full")
    full_result = full.fit()
    expected = weights(full.model)

    first = make_trainer(recipe, tmp_path / "cut", callbacks=[StopAfter(7)])
    stopped = first.fit()
    assert stopped.stop_reason == "killed_by_test" and stopped.global_step == 7
    assert first.epoch == 1 and 0 < first.batch_in_epoch < first.batches_per_epoch  # mid-epoch

    second = make_trainer(recipe, tmp_path / "cut", seed=123)  # other init: weights must come from the checkpoint
    result = second.fit(resume=tmp_path / "cut")
    assert result.global_step == full_result.global_step == 15
    for name, tensor in weights(second.model).items():
        assert torch.equal(tensor, expected[name]), name
    assert second.optimizer.state_dict()["state"][0]["step"] == full.optimizer.state_dict()["state"][0]["step"]
    rows_full = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    rows_cut = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(rows_cut) == len(rows_full) == 4  # header + one row per epoch, no duplicates
    assert [r.split(",")[:2] for r in rows_cut] == [r.split(",")[:2] for r in rows_full]


def test_truncated_checkpoint_falls_back_with_warning(tmp_path):
    recipe = tiny_recipe(trainer={"epochs": 2, "progress": "off", "tensorboard": "off", "checkpoint": {"keep_last": 3, "keep_best": False}})
    make_trainer(recipe, tmp_path, val=False).fit()
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000010", "step-00000020"]
    newest = checkpoints[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (tmp_path / "checkpoints" / ".tmp-step-00000030-1").mkdir()  # a crash mid-write leaves this behind

    with pytest.warns(UserWarning, match="falling back to the previous one"):
        assert find_resumable(tmp_path).path == checkpoints[0]

    state = checkpoints[0] / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.warns(UserWarning):
        with pytest.raises(Exception, match="every checkpoint"):
            find_resumable(tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch reading the garbage file
def test_resume_continues_from_fallback_checkpoint(tmp_path):
    recipe = tiny_recipe(trainer={"epochs": 3, "progress": "off", "tensorboard": "off", "checkpoint": {"keep_last": 3}})
    full = make_trainer(recipe, tmp_path / "full", val=False)
    full.fit()
    cut = make_trainer(recipe, tmp_path / "cut", val=False, callbacks=[StopAfter(20)])
    cut.fit()
    (tmp_path / "cut" / "checkpoints" / "step-00000020" / "state.pt").write_bytes(b"\x80garbage")
    resumed = make_trainer(recipe, tmp_path / "cut", seed=5, val=False)
    with pytest.warns(UserWarning, match="step-00000020"):
        resumed.fit(resume=tmp_path / "cut")
    expected = weights(full.model)
    assert all(torch.equal(v, expected[k]) for k, v in weights(resumed.model).items())


@pytest.mark.slow
def test_sigterm_writes_a_resumable_checkpoint(tmp_path):
    ready = tmp_path / "ready"
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.engine.sigterm_worker", str(run_dir), str(ready)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 60
    while not ready.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "the worker never reached step 3"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "received SIGTERM" in output and "STOP_REASON=signal" in output, output
    stopped_at = int(output.split("STEP=")[1].split()[0])
    assert 3 <= stopped_at < 500
    checkpoint = find_resumable(run_dir)
    assert checkpoint.meta["step"] == stopped_at

    recipe = tiny_recipe(trainer={"epochs": 50, "max_steps": stopped_at + 4, "progress": "off", "tensorboard": "off"})
    trainer = make_trainer(recipe, run_dir, val=False)
    result = trainer.fit(resume=run_dir)
    assert result.global_step == stopped_at + 4 and result.stop_reason == "max_steps"


class BrokenRows(SyntheticRows):
    """Validation data with one row that fails when it is read (like a corrupt media file)."""

    def __getitem__(self, index):
        if index == 7:
            raise ValueError("row 7: cannot decode")
        return super().__getitem__(index)


def test_failed_validation_keeps_the_training_done_so_far(tmp_path, capsys):
    recipe = tiny_recipe(trainer={"epochs": 2, "progress": "off", "tensorboard": "off"})
    model = tiny_model(recipe)
    trainer = Trainer(model, recipe, SyntheticRows(40), TinyCollate(model), val_dataset=BrokenRows(12, seed=1), run_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot decode"):
        trainer.fit()
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000010"]
    assert "--resume" in capsys.readouterr().out
    fixed = make_trainer(recipe, tmp_path, seed=5)
    result = fixed.fit(resume=tmp_path)
    assert result.global_step == 20 and result.epochs_completed == 2
    assert len(result.history) == 2  # epoch 1's evaluation ran again first, then epoch 2
