"""``mmfuse explain RUN --data FILE --out DIR``: per-sample, per-modality attributions (Captum)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "explain predictions: modality ablation and integrated gradients per modality, maps per sample (Captum)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfuse.cli.model_data import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder: sample-<line>/ per row and summary.json")
    parser.add_argument("--task", help="task to explain (default: the first task)")
    parser.add_argument("--limit", type=int, default=20, help="explain at most this many rows (default 20)")
    parser.add_argument("--steps", type=int, default=32, help="integration steps of integrated gradients")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        try:
            import captum  # noqa: F401
        except ImportError:
            print("error: mmfuse explain needs captum: pip install 'mmfuse[explain]' (or pip install captum)")
            return EXIT_BAD_INPUT
        from mmfuse.cli.model_data import open_model_data
        from mmfuse.explain import ExplainError, explain_batch, summarise, write_sample

        args.batch_size = 1
        data = open_model_data(args, with_targets=False)
        tasks = list(data.model.tasks)
        task = args.task or tasks[0]
        if task not in tasks:
            print(f"error: --task {task}: the model's tasks are {', '.join(tasks)}")
            return EXIT_BAD_INPUT
        preprocessors = data.dataset.preprocessors
        args.out.mkdir(parents=True, exist_ok=True)
        explanations = []
        for batch in data.batches():
            if len(explanations) >= args.limit:
                break
            line = data.dataset.manifest.rows[int(batch["index"][0])].line
            try:
                explanation = explain_batch(data.model, batch, task, preprocessors, steps=args.steps, line=line)
            except ExplainError as exc:
                print(f"error: {exc}")
                return EXIT_BAD_INPUT
            write_sample(explanation, args.out)
            explanations.append(explanation)
        table = summarise(explanations)
        (args.out / "summary.json").write_text(json.dumps({"task": task, "samples": len(explanations), "modalities": table}, indent=2) + "\n")
        print(f"{len(explanations)} samples explained for task '{task}' -> {args.out}")
        print(f"{'modality':<12} {'mean ablation':>14} {'mean IG share':>14} {'ranked first':>13}")
        for name, row in sorted(table.items(), key=lambda item: -item[1]["mean_ig_share"] if item[1]["mean_ig_share"] == item[1]["mean_ig_share"] else 0):
            print(f"{name:<12} {row['mean_ablation']:>14.4f} {row['mean_ig_share']:>14.3f} {int(row['ranked_first']):>13}")
        return EXIT_OK
    return status.code
