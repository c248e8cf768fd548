"""Few-shot curve on the demo data: validation accuracy at k = 1, 5, 20 training rows per class,
for the prototype head and the linear probe, both on frozen encoders. One table.

    python benchmarks/few_shot.py --out /tmp/mmfuse-few-shot

Every run is `recipes/few_shot.yaml` with overrides: `data.shots_per_class=k` (same seed, so the
k-shot rows are nested: the 1-shot rows are among the 5-shot rows), and for the linear probe
`tasks.label.type=classification`. The encoders are the demo's tiny random "pretrained" models,
frozen and served from the feature cache; the fusion head and the head train. The validation
split (96 rows by default) is the same for every run. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "few_shot.yaml"
HEADS = {"prototype": [], "linear probe": ["tasks.label.type=classification"]}


def prepare(out: Path, train_rows: int, val_rows: int) -> None:
    from mmfuse.demo.runner import prepare_demo

    if not (out / "data" / "train.jsonl").is_file():
        prepare_demo(out, train_rows=train_rows, val_rows=val_rows)


def run(out: Path, shots: int, head: str, epochs: int) -> dict[str, float]:
    """One fit (no model folder or report written: the table needs the validation metrics only)."""
    from mmfuse.cache.samples import feature_cache_callbacks
    from mmfuse.demo.runner import demo_overrides
    from mmfuse.engine.trainer import Trainer
    from mmfuse.recipe import load_recipe
    from mmfuse.run import prepare

    overrides = [
        *demo_overrides(out), f"data.shots_per_class={shots}", f"trainer.epochs={epochs}",
        # decoded samples on disk, shared by the runs: every run after the first skips decoding
        "data.cache='disk'", f"data.cache_dir={out / 'cache'}",
        "trainer.progress='off'", "trainer.tensorboard='off'", *HEADS[head],
    ]
    recipe = load_recipe(RECIPE, overrides)
    started = time.perf_counter()
    prepared = prepare(recipe)
    trainer = Trainer.from_recipe(
        recipe, prepared.model, prepared.train, prepared.collate, val_dataset=prepared.val,
        run_dir=out / "runs" / f"k{shots}-{head.replace(' ', '-')}", callbacks=feature_cache_callbacks(recipe),
    )
    metrics = trainer.fit().metrics
    return {
        "accuracy": metrics["val/label/accuracy"], "f1": metrics["val/label/f1"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".mmfuse-few-shot"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=256)
    parser.add_argument("--val-rows", type=int, default=96)
    args = parser.parse_args()
    out = args.out.resolve()
    prepare(out, args.train_rows, args.val_rows)
    results = {(k, head): run(out, k, head, args.epochs) for k in args.shots for head in HEADS}
    print(f"\nvalidation accuracy / macro F1 ({args.val_rows} rows), {args.epochs} epochs, frozen encoders")
    print("| k per class | " + " | ".join(HEADS) + " |")
    print("|---|" + "---|" * len(HEADS))
    for k in args.shots:
        cells = [f"{results[k, h]['accuracy']:.3f} / {results[k, h]['f1']:.3f} ({results[k, h]['seconds']:.1f} s)" for h in HEADS]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
