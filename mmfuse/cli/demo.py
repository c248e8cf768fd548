"""``mmfuse demo [--out DIR]``: generate a small multimodal dataset (text, PNG, WAV, MP4) and tiny
local models, train ``recipes/demo.yaml`` fused and one modality at a time, print the results."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "generate a small multimodal dataset and tiny models, train the demo recipe, print per-modality and fused results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path(".mmfuse-demo"), help="folder for data, models and runs (default: .mmfuse-demo)")
    parser.add_argument("--recipe", type=Path, help="demo recipe (default: the packaged copy of recipes/demo.yaml)")
    parser.add_argument("--train-rows", type=int, default=256)
    parser.add_argument("--val-rows", type=int, default=96)
    parser.add_argument("--no-ablations", action="store_true", help="train only the fused model")
    parser.add_argument(
        "--captioning", action="store_true",
        help="also train a captioning variant: a tiny GPT-2 describes each sample's four cues from the encoders' tokens",
    )
    parser.add_argument("--captioning-epochs", type=int, default=20, help="epochs of the captioning run (default: 20)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. trainer.epochs=2")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        from transformers.utils import logging as transformers_logging

        from mmfuse.demo.runner import default_recipe_path, format_results, prepare_demo, run_demo

        transformers_logging.disable_progress_bar()  # five trainings: keep the output to the engine's lines

        recipe_path = args.recipe or default_recipe_path()
        if not recipe_path.is_file():
            print(
                f"error: demo recipe not found at {recipe_path}; pass --recipe PATH",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        started = time.perf_counter()
        print(f"writing the demo dataset and tiny models into {args.out} ...")
        prepare_demo(args.out, args.train_rows, args.val_rows)
        print(f"  {args.train_rows} train + {args.val_rows} val samples, each: text, PNG, WAV, MP4 ({time.perf_counter() - started:.0f}s)")
        results = run_demo(args.out, recipe_path, args.overrides, ablations=not args.no_ablations)
        print("\n" + format_results(results))
        if args.captioning:
            from mmfuse.demo.runner import format_captioning, run_captioning_demo

            captioning, examples = run_captioning_demo(args.out, recipe_path, args.overrides, args.captioning_epochs)
            print("\n" + format_captioning(captioning, examples))
        fused = next(r for r in results if r.name == "fused")
        print(f"\ntotal {time.perf_counter() - started:.0f}s. Fused model: {fused.run_dir / 'model'}")
        print(f"try: mmfuse predict {fused.run_dir} --data {args.out / 'data' / 'val.jsonl'} --out preds.jsonl")
        return EXIT_OK
    return status.code
