"""``mmfuse validate RECIPE [key=value ...]``: check a recipe and its plugins' parameters."""

from __future__ import annotations

import argparse
import sys

HELP = "check a recipe (and dotted overrides); report every problem with its path and line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.epochs=3")
    parser.add_argument("--print", action="store_true", dest="print_resolved", help="print the resolved recipe")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.plugin_host import get_registry
    from mmfuse.recipe import RecipeError, load_recipe

    registry = get_registry()
    for failure in registry.broken:
        print(f"warning: {failure.describe()}", file=sys.stderr)
    try:
        recipe = load_recipe(args.recipe, args.overrides, registry=registry)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.print_resolved:
        print(recipe.to_yaml(), end="")
    else:
        print(f"{args.recipe}: ok ({len(recipe.encoders)} encoders, {len(recipe.tasks)} tasks)")
    return EXIT_OK
