"""``mmfuse predict RUN --data FILE --out preds.jsonl``: one JSON line of predictions per row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

HELP = "predict with a trained model (run or model folder) on a manifest; write one JSON line per row"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfuse.cli.model_data import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output JSONL file")
    parser.add_argument("--probabilities", action="store_true", help="add '<task>_probabilities' per row")


def predictions(data: Any, with_probabilities: bool) -> Iterator[dict[str, Any]]:
    """``{"line": manifest line, task: prediction, ...}`` per row, in manifest order; a skipped
    row gets ``{"line": n, "skipped": reason}``."""
    import torch

    from mmfuse.predict import probability_labels

    model = data.model
    rows = data.dataset.manifest.rows
    done: dict[int, dict[str, Any]] = {}
    with torch.inference_mode():
        for batch in data.batches():
            outputs = model(batch)
            positions = batch["index"].tolist()
            for name, task in model.tasks.items():
                values = task.predict(outputs[name])
                probabilities = task.probabilities(outputs[name]) if with_probabilities else None
                keys = probability_labels(task, probabilities.shape[-1]) if probabilities is not None else []
                for offset, position in enumerate(positions):
                    record = done.setdefault(position, {"line": rows[position].line})
                    record[name] = values[offset]
                    if probabilities is not None:
                        row = probabilities[offset].float().cpu().tolist()
                        record[f"{name}_probabilities"] = {str(k): p for k, p in zip(keys, row)}
    for position, row in enumerate(rows):
        yield done.get(position) or {"line": row.line, "skipped": _skip_reason(data.dataset, position)}


def _skip_reason(dataset: Any, position: int) -> str:
    item = dataset[position]
    return getattr(item, "reason", "skipped")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        from mmfuse.cli.model_data import open_model_data

        data = open_model_data(args, with_targets=False)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = skipped = 0
        with open(args.out, "w", encoding="utf-8") as handle:
            for record in predictions(data, args.probabilities):
                handle.write(json.dumps(record, default=_plain) + "\n")
                written += 1
                skipped += "skipped" in record
        print(f"{args.out}: {written} rows ({skipped} skipped)")
        return EXIT_OK
    return status.code


def _plain(value: Any) -> Any:
    """JSON for what tasks may return besides plain Python (tensors, numpy numbers)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
