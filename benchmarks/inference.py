"""Inference latency: Predictor vs the raw module, and eager PyTorch vs ONNX Runtime.

    python benchmarks/inference.py [--repeats 30] [--threads 2]

Builds a tiny text (BERT) + image (ViT) model with random weights in a temporary folder, saves it
as a model folder, and times, at batch 1 and batch 32:

* ``Predictor.predict(samples)`` on raw samples (tokenising text, decoding PNG files), against
  ``module(batch)`` on pre-made tensors: the ratio is what preprocessing and decoding cost on top
  (the preprocessing alone, ``Predictor.collate``, is timed too);
* eager ``module(batch)`` against the ONNX export run by ONNX Runtime on the same tensors.

Prints the median of ``--repeats`` timed calls after warm-up (the four calls take turns), as a
markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call; the calls take turns so load from other processes on a shared
    machine affects them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def build_model_folder(root: Path) -> tuple[Path, list[dict]]:
    import torch

    from mmfuse.artifact import save
    from mmfuse.model import build_fused_model
    from mmfuse.recipe import parse_recipe
    from mmfuse.testing.media import write_png
    from mmfuse.testing.samples import SAMPLE_TEXTS
    from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm

    raw = {
        "encoders": {
            "text": {"type": "text_hf", "model": str(save_tiny_bert(root / "bert")), "max_length": 32},
            "image": {"type": "image_timm", "model": f"local-dir:{save_tiny_timm(root / 'vit')}"},
        },
        "fusion": {"type": "concat", "projection_dim": 32, "hidden_dims": [64], "output_dim": 32, "dropout": 0.0},
        "tasks": {"label": {"type": "classification", "labels": ["calm", "alert", "urgent"]}},
    }
    recipe = parse_recipe(raw)
    torch.manual_seed(0)
    folder = save(build_fused_model(recipe).eval(), root / "model", recipe)
    images = [write_png(root / f"img{i}.png", size=(48, 40), seed=i) for i in range(4)]
    samples = [{"text": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)], "image": str(images[i % 4])} for i in range(32)]
    return folder, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import onnxruntime
    import torch

    import mmfuse
    from mmfuse.export import FlatFusedModel, export_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, samples = build_model_folder(root)
        predictor = mmfuse.load(folder, batch_size=32)
        onnx_file = export_model(folder, root / "model.onnx", format="onnx", example=samples[:3])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        input_keys = {"text": ["attention_mask", "input_ids"], "image": ["pixels"]}
        flat = FlatFusedModel(predictor.module, input_keys, ["label"])

        print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
              f"median of {args.repeats} calls (ms)\n")
        print("| batch | Predictor.predict (raw samples) | of which preprocessing | module(batch) (tensors) "
              "| Predictor / module | ONNX Runtime | ORT / eager |")
        print("|---|---|---|---|---|---|---|")
        for size in (1, 32):
            chunk = samples[:size]
            batch = predictor.collate(chunk)
            feeds = {name: t.numpy() for name, t in zip(flat.input_names, flat.flatten_batch(batch))}

            def eager(batch=batch):
                with torch.inference_mode():
                    return predictor.module(batch)

            ms = interleaved_medians(
                {
                    "predict": lambda: predictor.predict(chunk),
                    "collate": lambda: predictor.collate(chunk),
                    "eager": eager,
                    "ort": lambda: session.run(["label"], feeds),
                },
                args.repeats,
            )
            print(f"| {size} | {ms['predict']:.2f} | {ms['collate']:.2f} | {ms['eager']:.2f} "
                  f"| {ms['predict'] / ms['eager']:.2f}x | {ms['ort']:.2f} | {ms['ort'] / ms['eager']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
