"""``mmfuse train RECIPE [key=value ...] [--resume RUN] [--run-dir DIR]``: train a recipe into a
run folder (resolved recipe, metrics CSV, checkpoints, final model)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train a recipe; writes a run folder with the resolved recipe, metrics, checkpoints and the model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.epochs=3")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: <output_dir>/<name>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder from its last checkpoint")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_OK
    from mmfuse.cli.errors import report_errors
    from mmfuse.plugins import get_registry
    from mmfuse.recipe import load_recipe

    registry = get_registry()
    for failure in registry.broken:
        print(f"warning: {failure.describe()}", file=sys.stderr)
    with report_errors() as status:
        recipe = load_recipe(args.recipe, args.overrides, registry=registry)
        from mmfuse.run import train

        outcome = train(recipe, run_dir=args.run_dir, resume=args.resume, registry=registry)
        for key, value in outcome.test_metrics.items():
            print(f"{key}: {value:.4f}")
        print(f"run folder: {outcome.run_dir}")
        print(f"model: {outcome.model_dir}  (mmfuse predict {outcome.run_dir} --data FILE --out preds.jsonl)")
        return EXIT_OK
    return status.code
