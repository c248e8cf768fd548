"""``mmfuse eval RUN --data FILE``: the metrics of a trained model on a labelled manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterable

HELP = "evaluate a trained model (run or model folder) on a labelled manifest; print its metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfuse.cli.model_data import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, help="also write the metrics to this JSON file")


def evaluate(data: Any) -> dict[str, float]:
    """``{"loss": ..., "<task>/<metric>": ...}`` over every non-skipped row of ``data``."""
    return evaluate_batches(data.model, data.batches(), data.device)


def evaluate_batches(model: Any, batches: Iterable[dict[str, Any]], device: Any) -> dict[str, float]:
    """Loss and every task's metrics of ``model`` over ``batches`` (already on ``device``)."""
    import torch

    metrics = {name: task.build_metrics().to(device) for name, task in model.tasks.items()}
    total_loss = torch.zeros((), device=device)
    rows = 0
    with torch.inference_mode():
        for batch in batches:
            outputs = model(batch)
            loss, _ = model.compute_loss(outputs, batch["targets"])
            count = len(batch["index"])
            total_loss += loss.float() * count
            rows += count
            for name, task in model.tasks.items():
                task.update_metrics(metrics[name], outputs[name], batch["targets"].get(name))
    if rows == 0:
        return {"rows": 0.0}
    results = {"loss": float(total_loss) / rows, "rows": float(rows)}
    for name, collection in metrics.items():
        for key, value in collection.compute().items():
            results[f"{name}/{key}"] = float(value)
    return results


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        from mmfuse.cli.model_data import open_model_data

        data = open_model_data(args, with_targets=True)
        results = evaluate(data)
        skipped = len(data.dataset) - int(results.get("rows", 0))
        width = max(len(key) for key in results)
        print(f"{args.data}: {int(results['rows'])} rows evaluated, {skipped} skipped")
        for key, value in results.items():
            if key != "rows":
                print(f"  {key:<{width}}  {value:.4f}")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**results, "skipped": skipped}, indent=2) + "\n")
        return EXIT_OK
    return status.code
