"""``mmfuse profile RECIPE [key=value ...]``: a few hundred training steps with a breakdown of
where the time goes, and the settings that would help."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "time a recipe's training steps: data wait, per-encoder forward/backward, fusion, tasks, samples/s, memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.num_workers=2")
    parser.add_argument("--steps", type=int, default=200, help="measured optimizer steps (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="steps run before measuring (default 5)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.cli.errors import report_errors
    from mmfuse.plugin_host import get_registry
    from mmfuse.recipe import load_recipe

    if args.steps < 1 or args.warmup < 0:
        print("--steps must be at least 1 and --warmup at least 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    registry = get_registry()
    with report_errors() as status:
        recipe = load_recipe(args.recipe, args.overrides, registry=registry)
        from mmfuse.profiling.advice import format_report, suggestions
        from mmfuse.profiling.steps import profile_recipe

        report = profile_recipe(recipe, steps=args.steps, warmup=args.warmup, registry=registry)
        print(format_report(report))
        for line in suggestions(report):
            print(f"suggestion: {line}")
        if args.json:
            args.json.write_text(json.dumps({**report.to_dict(), "suggestions": suggestions(report)}, indent=1), encoding="utf-8")
        return EXIT_OK
    return status.code
