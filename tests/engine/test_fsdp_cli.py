"""``mmfuse train`` with ``trainer.strategy: fsdp`` under torchrun (2 gloo processes) on real files:
the small from-scratch text and image encoders (a learned vocabulary, a conv stack with BatchNorm,
each layer group its own FSDP unit), then ``mmfuse.load`` of the model folder and of the sharded
checkpoint it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import mmfuse
from mmfuse.demo.dataset import write_demo_dataset
from tests.engine.torchrun import REPO, train_under_torchrun

pytestmark = pytest.mark.slow


def fsdp_recipe(folder: Path) -> Path:
    raw = yaml.safe_load((REPO / "recipes" / "small_from_scratch.yaml").read_text())
    raw["encoders"] = {name: raw["encoders"][name] for name in ("text", "image")}
    raw["output_dir"] = str(folder / "runs")
    raw["data"].update(train=str(folder / "data" / "train.jsonl"), val=str(folder / "data" / "val.jsonl"),
                       batch_size=8, num_workers=0, persistent_workers=False)
    raw["trainer"].update(epochs=2, progress="log", tensorboard="off", strategy="fsdp",
                          fsdp={"wrap": ["encoders", "encoder_layers", "fusion"]})
    path = folder / "fsdp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_mmfuse_train_with_fsdp_saves_the_model_its_sharded_checkpoint_holds(tmp_path):
    write_demo_dataset(tmp_path / "data", train_rows=48, val_rows=16)
    output = train_under_torchrun([str(fsdp_recipe(tmp_path))], cwd=tmp_path, timeout=400)
    assert "the last weights (step 6) are the best" in output or "restored the best weights" in output
    (run,) = (tmp_path / "runs").iterdir()
    saved = load_file(run / "model" / "model.safetensors")
    assert any("running_var" in key for key in saved)  # BatchNorm statistics travel too
    best = yaml.safe_load((run / "checkpoints" / "best.json").read_text())["name"]
    assert sorted(p.name for p in (run / "checkpoints" / best / "shards").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    from_folder = mmfuse.load(run)
    from_shards = mmfuse.load(run / "checkpoints" / best)
    consolidated = from_shards.module.state_dict()
    for key, tensor in saved.items():  # rank 0's buffers in both, as under DDP
        assert torch.equal(consolidated[key].cpu(), tensor), key
    rows = [{"text": "a red square", "image": str(path)} for path in sorted((tmp_path / "data").rglob("*.png"))[:4]]
    assert from_shards.predict(rows) == from_folder.predict(rows)
