"""``trainer.strategy: fsdp``: 2 gloo processes on the CPU, every case in one torchrun launch (with
a timeout, so a hang fails instead of stalling), compared with the same cases under DDP.

Cases (``tests/engine/fsdp_matrix.py``): every unit sharded separately, with an uneven validation
split; gradient accumulation with clipping; a mid-epoch stop and resume from a sharded checkpoint
(dropout: each rank's RNG matters), and the same after a SIGTERM to one rank; the best checkpoint
restored at the end and the model saved; an evaluation before the first step; bf16 mixed precision. Then ``mmfuse.load`` consolidates the sharded checkpoints on one process.
The configuration errors need no launch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmfuse
from mmfuse.engine.checkpoint import CheckpointError
from mmfuse.engine.fsdp import EmptyBatchUnderFSDP, EveryRankForward
from mmfuse.engine.trainer import Trainer
from mmfuse.recipe import RecipeError
from tests.engine.ddp_matrix import RowsCollate
from tests.engine.fsdp_matrix import CASES, REFERENCES
from tests.engine.torchrun_cases import launch_cases
from tests.engine.tiny import SyntheticRows, tiny_model, tiny_recipe

LAUNCH_TIMEOUT_S = 420  # generous for 2 busy cores; a hang in a collective is what it catches
LAUNCHED = [*CASES, *(f"ddp-{name}" for name in REFERENCES)]


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("fsdp")
    return out, launch_cases("tests.engine.fsdp_matrix", out, LAUNCHED, LAUNCH_TIMEOUT_S)


def assert_weights_close(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for key, tensor in want.items():
        torch.testing.assert_close(got[key], tensor, atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCES)
def test_fsdp_matches_ddp(launch, name):
    _, ranks = launch
    fsdp, ddp = ranks[name], ranks[f"ddp-{name}"]
    assert fsdp[0]["step"] == fsdp[1]["step"] == ddp[0]["step"]
    assert fsdp[1]["weights"] == {}  # the full weights are gathered on rank 0 only
    assert_weights_close(fsdp[0]["weights"], ddp[0]["weights"])
    # lr 0.3 in `best` amplifies float rounding of the reduce-scatter vs the all-reduce
    tolerance = 1e-4 if name == "best" else 1e-5
    assert fsdp[0]["logged"] == pytest.approx(ddp[0]["logged"], abs=tolerance)
    assert fsdp[1]["logged"] == fsdp[0]["logged"]
    # the validation (9 rows: 5 + 4 per rank, so rank 0 runs one more batch) is every rank's
    assert fsdp[0]["metrics"]["val/loss"] == pytest.approx(ddp[0]["metrics"]["val/loss"], abs=tolerance)
    assert fsdp[0]["metrics"] == fsdp[1]["metrics"]


@pytest.mark.slow
def test_the_best_checkpoint_is_restored_from_its_shards(launch):
    _, ranks = launch
    fsdp, ddp = ranks["best"], ranks["ddp-best"]
    assert fsdp[0]["restored_step"] == ddp[0]["restored_step"] is not None
    assert fsdp[0]["restored_step"] < fsdp[0]["step"]  # an earlier checkpoint, not the last weights


@pytest.mark.slow
def test_a_resume_from_a_sharded_checkpoint_is_exact(launch):
    out, ranks = launch
    pair = ranks["resume"]
    assert pair[0]["step"] == 8
    for key, tensor in pair[0]["uninterrupted"].items():
        assert torch.equal(pair[0]["weights"][key], tensor), key
    cut = out / "resume-cut" / "checkpoints" / "step-00000008"
    assert sorted(p.name for p in (cut / "shards").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (cut / "model.safetensors").exists()


@pytest.mark.slow
def test_a_sigterm_on_one_rank_checkpoints_every_shard_and_resumes_exactly(launch):
    _, ranks = launch
    for rank in ranks["resume_signal"]:
        assert rank["stopped"] == {"step": 6, "reason": "signal"}
    resumed, uninterrupted = ranks["resume_signal"][0], ranks["resume"][0]["uninterrupted"]
    assert resumed["step"] == 8
    for key, tensor in uninterrupted.items():
        assert torch.equal(resumed["weights"][key], tensor), key


@pytest.mark.slow
def test_bf16_mixed_precision_trains(launch):
    _, ranks = launch
    pair = ranks["bf16"]
    assert pair[0]["metrics"] == pair[1]["metrics"]
    assert all(torch.isfinite(t).all() and t.dtype == torch.float32 for t in pair[0]["weights"].values())
    # bf16 compute, fp32 master weights: close to the fp32 run, not equal to it
    assert pair[0]["metrics"]["val/loss"] == pytest.approx(ranks["plain"][0]["metrics"]["val/loss"], abs=0.05)
    plain = ranks["plain"][0]["weights"]
    assert any(not torch.equal(tensor, plain[key]) for key, tensor in pair[0]["weights"].items())


@pytest.mark.slow
def test_an_evaluation_before_the_first_step_changes_nothing(launch):
    _, ranks = launch
    first, plain = ranks["evaluate_first"][0], ranks["plain"][0]
    assert first["step"] == plain["step"]
    for key, tensor in plain["weights"].items():
        assert torch.equal(first["weights"][key], tensor), key
    assert first["metrics"] == plain["metrics"]


def test_an_empty_micro_batch_under_fsdp_is_explained_not_hung():
    step = EveryRankForward(torch.nn.Identity(), rank=1)
    for batch in (None, {"inputs": {}, "present": {}, "targets": {}, "skipped": 4}):
        with pytest.raises(EmptyBatchUnderFSDP, match="rank 1: a training micro-batch has no rows.*data.drop_last"):
            step(batch)


@pytest.mark.slow
def test_mmfuse_load_consolidates_a_sharded_checkpoint(launch):
    out, ranks = launch
    rows = [{"feats": row["x"], "extra": row["x"]} for row in SyntheticRows(5, seed=7)]
    saved = mmfuse.load(out / "best" / "model")  # the model folder of rank 0's gathered weights
    best = ranks["best"][0]["restored_step"]
    consolidated = mmfuse.load(out / "best" / "checkpoints" / f"step-{best:08d}")
    assert_weights_close(dict(consolidated.module.state_dict()), ranks["best"][0]["weights"], atol=0)
    assert consolidated.predict(rows) == saved.predict(rows)
    # a run folder without model/ (stopped early): its best checkpoint
    run = mmfuse.load(out / "resume-cut")
    assert run.predict(rows)


def test_fsdp_needs_several_processes(tmp_path):
    recipe = tiny_recipe(trainer={"strategy": "fsdp", "device": "cpu"})
    model = tiny_model(recipe)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node N"):
        Trainer.from_recipe(recipe, model, SyntheticRows(8), RowsCollate(model), run_dir=tmp_path)


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ({"strategy": "fsdp", "compile": True}, "trainer.compile does not combine"),
        ({"strategy": "fsdp", "stages": [{"at_step": 2, "unfreeze": ["feats"]}]}, "trainer.stages do not combine"),
        ({"strategy": "fsdp", "precision": "fp16"}, "mixed_precision"),
        ({"fsdp": {"reshard_after_forward": False}}, "add trainer.strategy: fsdp"),
        ({"strategy": "fsdp", "fsdp": {"wrap": ["heads"]}}, "trainer.fsdp.wrap"),
        ({"strategy": "zero3"}, "trainer.strategy"),
        ({"strategy": "fsdp", "fsdp": {"mixed_precision": {"param_dtype": "bf8"}}}, "param_dtype"),
    ],
)
def test_bad_fsdp_settings_are_named(trainer, message):
    with pytest.raises(RecipeError, match=message):
        tiny_recipe(trainer=trainer)


@pytest.mark.slow
def test_ddp_refuses_to_resume_a_sharded_checkpoint(launch, tmp_path):
    out, _ = launch
    recipe = tiny_recipe(trainer={"device": "cpu", "progress": "off", "tensorboard": "off"})
    model = tiny_model(recipe)
    trainer = Trainer.from_recipe(recipe, model, SyntheticRows(32), RowsCollate(model), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="sharded checkpoint .*trainer.strategy: fsdp"):
        with pytest.warns(UserWarning, match="world_size: 2 -> 1"):  # forced past the settings check
            trainer.fit(resume=out / "resume-cut", resume_force=True)
