"""Epoch throughput with and without the caches, measured side by side in one run.

    .venv/bin/python benchmarks/throughput.py --rows 2000 --epochs 3 [--workers 0] [--out .bench-throughput]

The demo generator writes ``--rows`` training rows of real files (a PNG, a WAV and an MP4 per row,
plus a sentence) and the demo recipe trains on them with the engine (no validation split). For
each setting the script records every epoch's wall and CPU time:

- ``no cache``: ``data.cache=off``: every epoch decodes, resamples, transforms and tokenizes;
- ``disk cache``: a fresh ``data.cache=disk`` folder: epoch 1 fills it (cold), later epochs read
  memory-mapped shards (warm);
- ``memory cache``: ``data.cache=memory``, epochs after the first (warm);
- ``frozen, no cache``: every encoder frozen, ``data.cache=off``;
- ``frozen + feature cache``: every encoder frozen, ``data.feature_cache=auto`` and the memory
  cache: epochs after the first run no encoder at all.

The data-wait share is the part of an epoch's training steps spent waiting for the next batch
(``train/data_wait_share`` of the training log). Ratios compare settings measured in
the same run; on a shared machine absolute times move, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import string
import time
from pathlib import Path
from typing import Any

import torch

from mmfuse.engine.callbacks import Callback

ENCODERS = ("text", "image", "audio", "video")


class EpochClock(Callback):
    """Wall and process CPU seconds of every training epoch's steps, and its data-wait share
    (``train/data_wait_share``, added to the row by mmfuse's own DataWaitLogger)."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float, float]] = []
        self._start = self._end = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: Any, loss: Any) -> None:
        self._end = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        wall, cpu = self._end[0] - self._start[0], self._end[1] - self._start[1]
        self.epochs.append((wall, cpu, float(metrics.get("train/data_wait_share", float("nan")))))


def prepare_data(out: Path, rows: int) -> None:
    from mmfuse.demo.dataset import WORDS, write_demo_dataset
    from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm

    marker = out / f"rows-{rows}"
    if marker.exists():
        return
    shutil.rmtree(out, ignore_errors=True)
    write_demo_dataset(out / "data", train_rows=rows, val_rows=16)
    save_tiny_bert(out / "models" / "text", WORDS, characters=string.ascii_lowercase, num_layers=1, max_length=32)
    save_tiny_timm(out / "models" / "image", "test_resnet")
    marker.write_text("ok")


def recipe_for(out: Path, *overrides: str) -> Any:
    from mmfuse.demo.runner import default_recipe_path, demo_overrides
    from mmfuse.recipe import load_recipe

    return load_recipe(
        default_recipe_path(),
        [*demo_overrides(out), "data.val=null", 'trainer.progress="off"', 'trainer.tensorboard="off"',
         "trainer.log_every_steps=100000", *overrides],
    )


def train_epochs(out: Path, name: str, *overrides: str) -> list[tuple[float, float, float]]:
    from mmfuse.run import train

    clock = EpochClock()
    run_dir = out / "runs" / name.replace(" ", "-").replace("+", "and")
    shutil.rmtree(run_dir, ignore_errors=True)
    train(recipe_for(out, *overrides), run_dir=run_dir, callbacks=[clock])
    shutil.rmtree(run_dir, ignore_errors=True)
    return clock.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(".bench-throughput"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))))
    started = time.perf_counter()
    prepare_data(args.out, args.rows)
    print(f"data: {args.rows} rows written/reused in {time.perf_counter() - started:.0f} s")

    common = [f"trainer.epochs={args.epochs}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
              f"data.cache_dir={(args.out / 'cache').resolve()}"]
    frozen = [f"encoders.{name}.freeze=true" for name in ENCODERS]
    shutil.rmtree(args.out / "cache", ignore_errors=True)
    settings = {
        "no cache": [*common, 'data.cache="off"'],
        "disk cache": [*common, "data.cache=disk"],
        "memory cache": [*common, "data.cache=memory"],
        "frozen, no cache": [*common, *frozen, 'data.cache="off"'],
        "frozen + feature cache": [*common, *frozen, "data.cache=memory", "data.feature_cache=auto"],
    }
    results: dict[str, list[tuple[float, float, float]]] = {}
    for name, overrides in settings.items():
        results[name] = train_epochs(args.out, name, *overrides)
        print(f"{name:<24} epochs (wall s): {[round(wall, 2) for wall, *_ in results[name]]}", flush=True)

    def later(name: str, index: int) -> float:  # median over epochs after the first (warm)
        return statistics.median(epoch[index] for epoch in results[name][1:])

    def warm(label: str, name: str) -> tuple[str, float, float, float]:
        return (label, later(name, 0), later(name, 1), later(name, 2))

    rows = [
        warm("no cache", "no cache"),
        ("cold disk cache (epoch 1)", *results["disk cache"][0]),
        warm("warm disk cache", "disk cache"),
        warm("warm memory cache", "memory cache"),
        warm("frozen encoders, no cache", "frozen, no cache"),
        warm("frozen encoders + feature cache", "frozen + feature cache"),
    ]
    base_wall, base_cpu = rows[0][1], rows[0][2]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.rows} rows, batch {args.batch_size}, {args.workers} workers")
    print(f"| setting | epoch wall s | samples/s | speed-up (wall) | epoch CPU s | speed-up (CPU) | data wait |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for name, wall, cpu, wait in rows:
        wait_text = f"{100 * wait:.1f}%"
        print(f"| {name} | {wall:.2f} | {args.rows / wall:.0f} | {base_wall / wall:.1f}x | {cpu:.2f} | {base_cpu / cpu:.1f}x | {wait_text} |")
        table.append({"setting": name, "wall": wall, "cpu": cpu, "speedup_wall": base_wall / wall, "speedup_cpu": base_cpu / cpu,
                      "data_wait_share": wait})
    frozen_base = rows[4][1]
    print(f"frozen + feature cache vs frozen without cache: {frozen_base / rows[5][1]:.1f}x (wall)")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "results": table, "epochs": results}, indent=1))


if __name__ == "__main__":
    main()
