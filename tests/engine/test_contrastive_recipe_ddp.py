"""The shipped ``recipes/contrastive_text_image.yaml`` runs under torchrun (2 gloo processes).

Only what cannot run here is overridden: the hub models become tiny local ones, the data a few
generated caption / image pairs, the batch size and worker count fit 2 CPU cores. The fusion head,
which the contrastive task does not read, used to make DDP fail ("Expected to have finished
reduction"); the 5-row validation split gives the ranks 3 and 2 rows, so one rank joins the
negatives gather with no rows of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfuse.engine.checkpoint import find_resumable
from mmfuse.testing.media import write_png
from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm
from tests.engine.torchrun import REPO, train_under_torchrun

WORDS = ["cat", "dog", "bird", "tree", "car", "boat"]


def write_pairs(folder: Path, split: str, rows: int, offset: int) -> None:
    lines = []
    for index in range(offset, offset + rows):
        image = write_png(folder / "img" / f"{index}.png", size=(32, 32), seed=index)
        lines.append(json.dumps({"caption": f"a {WORDS[index % 6]} in the picture", "image": str(image.relative_to(folder))}))
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_the_shipped_contrastive_recipe_trains_under_torchrun(tmp_path):
    write_pairs(tmp_path / "data", "train", 16, 0)
    write_pairs(tmp_path / "data", "val", 5, 100)
    bert = save_tiny_bert(tmp_path / "models" / "bert")
    vit = save_tiny_timm(tmp_path / "models" / "vit", "test_vit", image_size=32)
    run_dir = tmp_path / "run"
    output = train_under_torchrun([
        str(REPO / "recipes" / "contrastive_text_image.yaml"),
        f"data.train={tmp_path / 'data' / 'train.jsonl'}", f"data.val={tmp_path / 'data' / 'val.jsonl'}",
        "data.batch_size=4", "data.eval_batch_size=2", "data.num_workers=0",
        f"encoders.text.model={bert}", "encoders.text.max_length=8", f"encoders.image.model=local-dir:{vit}",
        "trainer.epochs=2", "trainer.device=cpu", "--run-dir", str(run_dir),
    ], cwd=tmp_path)
    assert "fusion: no task reads it, so it is not trained" in output
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val/align/recall@1" in rows[0]
    assert (run_dir / "model" / "mmfuse.json").is_file()
    assert (run_dir / "report.html").is_file()  # rank 0 evaluates for it alone, after the process group ends
    state = find_resumable(run_dir).state
    assert state["global_step"] == 4  # 16 rows: 8 per rank, batch 4, 2 epochs
    assert len(state["rng"]) == 2  # each rank's RNG state
