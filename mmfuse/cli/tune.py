"""``mmfuse tune RECIPE [key=value | key=loguniform(a,b) | key=choice(a,b) ...] --trials N``:
hyper-parameter search with Optuna; writes a results table and the best recipe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "search hyper-parameters with Optuna (trials run one after another); writes trials.csv and best.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file (may hold a top-level search: section)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="plain overrides, or searched keys: optimizer.lr=loguniform(1e-5,1e-2) fusion.type=choice(concat,gated)",
    )
    parser.add_argument("--trials", type=int, required=True, help="number of trials")
    parser.add_argument("--metric", default="val/loss", help="metric to optimise (default: val/loss)")
    parser.add_argument("--direction", choices=("minimize", "maximize"), help="default: minimize for losses, else maximize")
    parser.add_argument("--pruner", choices=("median", "none"), default="median", help="stop unpromising trials at evaluations")
    parser.add_argument("--study-dir", type=Path, help="folder for the trials (default: <output_dir>/<name>-tune-<time>)")
    parser.add_argument("--verbose", action="store_true", help="keep third-party progress bars (model loading, downloads)")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
    from mmfuse.cli.errors import report_errors
    from mmfuse.plugin_host import get_registry

    if args.trials < 1:
        print("error: --trials must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.verbose:
        from mmfuse.progress_bars import silence_third_party_progress_bars

        silence_third_party_progress_bars()
    registry = get_registry()
    direction = args.direction or ("minimize" if args.metric.endswith("loss") else "maximize")
    with report_errors() as status:
        from mmfuse.tune import format_table, tune

        result = tune(
            args.recipe, args.overrides, trials=args.trials, metric=args.metric, direction=direction,
            study_dir=args.study_dir, pruner=args.pruner, registry=registry,
        )
        print(format_table(result.rows, args.metric))
        print(f"results: {result.study_dir / 'trials.csv'}")
        if result.best_recipe is None:
            return EXIT_FAILURE
        print(f"best: {args.metric} = {result.best_value:.6g}; recipe: {result.best_recipe}")
        print(f"re-run it: mmfuse train {result.best_recipe}")
        return EXIT_OK
    return status.code
