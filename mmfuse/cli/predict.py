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
    decoding = parser.add_argument_group("text generation (tasks of type mmfuse/generation)")
    decoding.add_argument("--max-new-tokens", type=int, help="most tokens generated per row")
    decoding.add_argument("--num-beams", type=int, help="beam search width (1: greedy or sampling)")
    decoding.add_argument("--sample", dest="do_sample", action="store_true", default=None, help="sample instead of greedy / beam search")
    decoding.add_argument("--temperature", type=float, help="sampling temperature")
    decoding.add_argument("--top-p", type=float, help="nucleus sampling mass")


def predictions(data: Any, with_probabilities: bool, decoding: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """``{"line": manifest line, task: prediction, ...}`` per row, in manifest order; a skipped
    row gets ``{"line": n, "skipped": reason}``. ``decoding`` overrides the decoding settings of
    text-generation tasks (``max_new_tokens``, ``num_beams``, ``do_sample``, ``temperature``,
    ``top_p``)."""
    import torch

    from mmfuse.predict import probability_labels

    model = data.model
    rows = data.dataset.manifest.rows
    for task in model.tasks.values():
        if decoding and isinstance(getattr(task, "decoding", None), dict):
            task.decoding.update({key: value for key, value in decoding.items() if value is not None})
    done: dict[int, dict[str, Any]] = {}
    with torch.inference_mode():
        for batch in data.batches():
            outputs = model(batch)
            positions = batch["index"].tolist()
            for name, task in model.tasks.items():
                prompts = _row_prompts(data, name, positions) if callable(getattr(task, "generate", None)) else None
                values = task.generate(outputs[name], prompts) if prompts is not None else task.predict(outputs[name])
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


def _row_prompts(data: Any, task: str, positions: list[int]) -> list[str | None] | None:
    """Per-row prompts of a text-generation task: a ``{"prompt": ...}`` value in the rows' target
    column (as in training); None when no row has one (the task's configured prompt is used)."""
    column = data.recipe.target_of(task) if task in data.recipe.tasks else task
    values = [data.dataset.manifest.rows[position].values.get(column) for position in positions]
    prompts = [value.get("prompt") if isinstance(value, dict) else None for value in values]
    return prompts if any(prompt is not None for prompt in prompts) else None


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
            decoding = {key: getattr(args, key, None) for key in ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p")}
            for record in predictions(data, args.probabilities, decoding):
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
