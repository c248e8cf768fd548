"""``mmfuse export RUN --format onnx|torch-export [--out FILE] [--samples FILE.jsonl]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "export a trained model (run folder or model folder) to ONNX or torch.export; preprocessing stays in Python"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder (holding model/) or a model folder written by mmfuse.save")
    parser.add_argument("--format", choices=["onnx", "torch-export"], default="onnx")
    parser.add_argument(
        "--out", default=None, help="output file; default: <model folder>.onnx / .pt2 next to the model folder"
    )
    parser.add_argument(
        "--samples",
        default=None,
        help="JSON-lines file of raw samples to trace and check parity with (relative media paths are "
        "resolved against the file's folder); default: padding rows from each preprocessor",
    )


def run(args: argparse.Namespace) -> int:
    from mmfuse.artifact import ModelFolderError, resolve_model_dir
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
    from mmfuse.contracts import SampleError
    from mmfuse.export import FORMATS, ExportError, export_model

    try:
        model_dir = resolve_model_dir(args.run)
        samples = _read_samples(Path(args.samples)) if args.samples else None
        out = Path(args.out) if args.out else model_dir.parent / f"{model_dir.name}{FORMATS[args.format]}"
        export_model(model_dir, out, format=args.format, example=samples)
    except (ModelFolderError, SampleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    info = json.loads(Path(f"{out}.json").read_text())
    inputs = ", ".join(item["name"] for item in info["inputs"])
    outputs = ", ".join(item["name"] for item in info["outputs"])
    print(f"wrote {out} ({args.format}); inputs: {inputs}; outputs: {outputs}")
    print(f"parity with eager PyTorch: max abs diff {info['parity_max_abs_diff']:.2e}; details in {out}.json")
    return EXIT_OK


def _read_samples(file: Path) -> list[dict]:
    """Raw samples from JSON lines; relative string values that name existing files become absolute."""
    samples = []
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{file}: cannot read samples: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{file} line {number}: not valid JSON: {exc}") from exc
        if not isinstance(sample, dict):
            raise ValueError(f"{file} line {number}: expected a JSON object keyed by column")
        for key, value in sample.items():
            if isinstance(value, str) and not Path(value).is_absolute() and (file.parent / value).is_file():
                sample[key] = str(file.parent / value)
        samples.append(sample)
    if not samples:
        raise ValueError(f"{file}: no samples")
    return samples
