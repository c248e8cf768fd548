"""Batches whose rows were all bad (data.on_bad_sample: skip), through the real data pipeline:
the engine steps over them without calling the model, keeps its batch and step counts, resumes
exactly, and a step with no data at all does not move the weights."""

from __future__ import annotations

import json
import math

import torch

from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import build_dataset
from mmfuse.data.manifest import read_manifest
from mmfuse.engine.trainer import Trainer
from tests.engine.stop_after import StopAfter
from tests.engine.tiny import SyntheticRows, tiny_model, tiny_recipe, weights

#: with batch_size 2, no shuffling and grad_accum_steps 2: step 1 = one good and one empty batch,
#: step 2 = two empty batches (no data at all), step 3 = two good batches
BAD_ROWS = {2, 3, 4, 5, 6, 7}


def write_manifest(path):
    rows = SyntheticRows(12, seed=5)
    lines = []
    for index in range(len(rows)):
        row = rows[index]
        values = {"feats": row["x"], "extra": row["x"], "label": row["label"]}
        if index in BAD_ROWS:
            # half are caught up front (no input column), half when a worker reads them (wrong length)
            values = {"label": row["label"]} if index % 2 else {**values, "feats": row["x"][:2]}
        lines.append(json.dumps(values) + "\n")
    path.write_text("".join(lines))
    return path


def recipe():
    return tiny_recipe(
        data={"batch_size": 2, "shuffle": False, "on_bad_sample": "skip"},
        trainer={"epochs": 2, "grad_accum_steps": 2, "log_every_steps": 1, "progress": "off", "tensorboard": "off"},
    )


def trainer(tmp_path, run, seed=0, callbacks=()):
    config = recipe()
    model = tiny_model(config, seed=seed)
    manifest = read_manifest(write_manifest(tmp_path / "train.jsonl"))
    data = build_dataset(manifest, config, model, training=True)
    collate = BatchCollator({name: enc.preprocessor() for name, enc in model.encoders.items()}, dict(model.tasks.items()))
    assert collate([data[2], data[3]])["inputs"] == {}  # the pipeline does produce an empty batch
    return Trainer(model, config, data, collate, val_dataset=data, run_dir=tmp_path / run, callbacks=list(callbacks))


def test_all_bad_batches_are_stepped_over(tmp_path, capsys):
    fitted = trainer(tmp_path, "full")
    calls = []
    fitted.model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0]["inputs"])))
    result = fitted.fit()

    assert result.stop_reason == "completed" and result.global_step == 6  # 3 steps per epoch
    assert calls and all(calls)  # the model never saw an empty batch (training or evaluation)
    assert [row["train/skipped"] for row in result.history] == [6, 6]
    out = capsys.readouterr().out
    assert "epoch 2: skipped 6 bad sample(s)" in out
    assert math.isfinite(result.metrics["train/loss"]) and math.isfinite(result.metrics["val/loss"])
    assert result.metrics["val/skipped"] == 6  # the validation split's bad rows are counted too
    assert "validation skipped 6 bad sample(s)" in out
    # the step without any data did not update: AdamW counted 2 of the 3 steps per epoch
    first = fitted.optimizer.param_groups[0]["params"][0]
    assert int(fitted.optimizer.state[first]["step"]) == 4


def test_resume_across_an_empty_step_is_exact(tmp_path):
    full = trainer(tmp_path, "full")
    full.fit()
    trainer(tmp_path, "cut", callbacks=[StopAfter(2)]).fit()  # right after the step with no data
    resumed = trainer(tmp_path, "cut", seed=11)
    result = resumed.fit(resume=tmp_path / "cut")
    assert result.global_step == 6
    expected = weights(full.model)
    for name, tensor in weights(resumed.model).items():
        assert torch.equal(tensor, expected[name]), name
