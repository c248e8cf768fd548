"""Pre-train -> fine-tune and full fine-tune -> LoRA on the demo data (text + image), one table.

    python benchmarks/pretraining.py --out /tmp/mmfuse-pretraining

Rows (all on the same labelled subset and the same validation rows; the encoders start from the
demo's tiny random "pretrained" model folders):

- scratch:    the text + image classifier trained on the labelled rows only;
- pretrained: `mmfuse chain` - contrastive text-image alignment on the unlabelled rows first,
              then the same classifier with init_from {encoders.text, encoders.image};
- lora:       the classifier with LoRA adapters on both encoders instead of full fine-tuning.

Columns: validation accuracy, trainable parameters, seconds per fine-tuning epoch (wall clock of
the fit divided by its epochs, evaluation included). Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path
from typing import Any

import yaml

from mmfuse.engine.callbacks import Callback


def prepare(out: Path, unlabelled: int, labelled: int, val: int) -> dict[str, Path]:
    from mmfuse.demo.dataset import WORDS, write_demo_dataset
    from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm

    data = write_demo_dataset(out / "data", train_rows=unlabelled, val_rows=val, seed=1)
    rows = data.train.read_text().splitlines()
    (out / "data" / "labelled.jsonl").write_text("\n".join(rows[:labelled]) + "\n")
    # the contrastive stage never reads a label: give it the rows without one
    unlabelled_rows = [json.dumps({k: v for k, v in json.loads(r).items() if k != "label"}) for r in rows]
    (out / "data" / "unlabelled.jsonl").write_text("\n".join(unlabelled_rows) + "\n")
    text = save_tiny_bert(out / "models" / "text", WORDS, characters=string.ascii_lowercase, num_layers=2, max_length=32)
    image = save_tiny_timm(out / "models" / "image", "test_resnet")
    return {"labelled": out / "data" / "labelled.jsonl", "unlabelled": out / "data" / "unlabelled.jsonl",
            "val": data.val, "text": text, "image": image}


def encoders(paths: dict[str, Path]) -> dict[str, Any]:
    return {
        "text": {"type": "text_hf", "model": str(paths["text"]), "max_length": 16, "pooling": "mean"},
        "image": {"type": "image_timm", "model": f"local-dir:{paths['image']}"},
    }


def classifier(paths: dict[str, Path], epochs: int, peft: bool = False) -> dict[str, Any]:
    slots = encoders(paths)
    if peft:
        slots["text"]["peft"] = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}
        slots["image"]["peft"] = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["conv2"]}
    return {
        "name": "classify",
        "seed": 0,
        "data": {"train": str(paths["labelled"]), "val": str(paths["val"]), "batch_size": 16},
        "encoders": slots,
        "fusion": {"type": "concat", "projection_dim": 32, "hidden_dims": [64], "output_dim": 32},
        "tasks": {"label": {"type": "classification", "labels": ["low", "medium", "high"]}},
        "optimizer": {"lr": 3.0e-3},
        "scheduler": {"name": "cosine", "warmup_ratio": 0.1},
        "trainer": {"epochs": epochs, "device": "cpu", "progress": "off", "tensorboard": "off"},
    }


def contrastive(paths: dict[str, Path], epochs: int) -> dict[str, Any]:
    return {
        "name": "align",
        "seed": 0,
        "data": {"train": str(paths["unlabelled"]), "batch_size": 32, "drop_last": True},
        "encoders": encoders(paths),
        "fusion": {"type": "mean", "output_dim": 32},
        "tasks": {"align": {"type": "contrastive", "encoders": ["text", "image"], "embed_dim": 32}},
        "optimizer": {"lr": 3.0e-3},
        "scheduler": {"name": "cosine", "warmup_ratio": 0.1},
        "trainer": {"epochs": epochs, "device": "cpu", "progress": "off", "tensorboard": "off"},
    }


class FitClock(Callback):
    """Wall-clock seconds of each fit, by run folder name (a training callback)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def on_fit_start(self, trainer: Any) -> None:
        self.started[trainer.run_dir.name] = time.perf_counter()

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        self.seconds[trainer.run_dir.name] = time.perf_counter() - self.started[trainer.run_dir.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mmfuse-pretraining"))
    parser.add_argument("--unlabelled", type=int, default=512)
    parser.add_argument("--labelled", type=int, default=48)
    parser.add_argument("--val", type=int, default=192)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    from mmfuse.chain import load_chain, run_chain
    from mmfuse.model import build_fused_model
    from mmfuse.recipe import parse_recipe
    from mmfuse.run import train

    paths = prepare(args.out, args.unlabelled, args.labelled, args.val)
    results = []

    def counted(raw: dict[str, Any]) -> int:
        model = build_fused_model(parse_recipe(raw))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    clock = FitClock()
    for name, folder, peft in (("from scratch: full fine-tune", "scratch", False),
                               ("from scratch: LoRA r=4 (text query/value, image conv2)", "lora", True)):
        raw = classifier(paths, args.epochs, peft)
        outcome = train(parse_recipe(raw), run_dir=args.out / "runs" / folder, callbacks=[clock])
        results.append({"setup": name, "acc": outcome.fit.metrics.get("val/label/accuracy"),
                        "trainable": counted(raw), "s_per_epoch": clock.seconds[folder] / args.epochs})

    chain_file = args.out / "chain.yaml"
    finetune = classifier(paths, args.epochs)
    chain_file.write_text(yaml.safe_dump({
        "name": "align-then-classify",
        "output_dir": str(args.out / "runs"),
        "stages": [
            {"name": "pretrain", "recipe": contrastive(paths, args.pretrain_epochs)},
            {"name": "finetune", "recipe": finetune,
             "init_from": {"source": "pretrain", "map": ["encoders.text", "encoders.image"]}},
        ],
    }, sort_keys=False))
    outcome = run_chain(load_chain(chain_file), chain_dir=args.out / "runs" / "chain", callbacks=[clock])
    finetune_outcome = outcome.outcomes["finetune"]
    results.append({"setup": f"contrastive pre-train ({args.pretrain_epochs} epochs on {args.unlabelled} unlabelled rows, "
                             f"{clock.seconds['pretrain'] / args.pretrain_epochs:.2f} s/epoch) -> full fine-tune",
                    "acc": finetune_outcome.fit.metrics.get("val/label/accuracy"),
                    "trainable": counted(finetune), "s_per_epoch": clock.seconds["finetune"] / args.epochs})

    print(f"{args.labelled} labelled training rows, {args.val} validation rows, {args.epochs} fine-tuning epochs")
    lines = ["| setup | val accuracy | trainable parameters | s / fine-tuning epoch |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['setup']} | {r['acc']:.3f} | {r['trainable']:,} | {r['s_per_epoch']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
