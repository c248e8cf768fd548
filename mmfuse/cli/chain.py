"""``mmfuse chain CHAIN [stage.key=value ...] [--resume CHAIN_DIR] [--run-dir DIR]``: train the
stages of a chain file in order, each into its own run folder, carrying weights by ``init_from``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train the stages of a chain file in order (pre-train, then fine-tune); --resume continues a stopped chain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chain", help="chain YAML file (name, output_dir, stages: [{name, recipe, overrides, init_from, teacher_from}])")
    parser.add_argument(
        "overrides", nargs="*", metavar="stage.key=value", help="overrides of one stage's recipe, e.g. finetune.trainer.epochs=3"
    )
    parser.add_argument("--run-dir", type=Path, help="chain folder (default: <output_dir>/<name>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="CHAIN_DIR", help="continue the chain in this folder where it stopped")
    parser.add_argument("--verbose", action="store_true", help="keep third-party progress bars (model loading, downloads)")


def run(args: argparse.Namespace) -> int:
    from mmfuse.chain import load_chain, run_chain
    from mmfuse.cli import EXIT_FAILURE, EXIT_OK
    from mmfuse.cli.errors import report_errors
    from mmfuse.plugin_host import get_registry

    if not args.verbose:
        from mmfuse.progress_bars import silence_third_party_progress_bars

        silence_third_party_progress_bars()
    registry = get_registry()
    for failure in registry.broken:
        print(f"warning: {failure.describe()}", file=sys.stderr)
    with report_errors() as status:
        chain = load_chain(args.chain, args.overrides, registry=registry)
        outcome = run_chain(chain, chain_dir=args.run_dir, resume=args.resume, registry=registry)
        for name, stage_outcome in outcome.outcomes.items():
            if stage_outcome is None:
                continue
            for key, value in stage_outcome.test_metrics.items():
                print(f"{name} {key}: {value:.4f}")
        for name, state in outcome.states.items():
            print(f"stage {name}: {state}  ({outcome.stage_dirs[name]})")
        print(f"chain folder: {outcome.chain_dir}")
        return EXIT_OK if outcome.completed else EXIT_FAILURE
    return status.code
