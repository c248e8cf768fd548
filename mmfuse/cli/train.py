"""``mmfuse train RECIPE [key=value ...] [--resume RUN] [--run-dir DIR]``: train a recipe into a
run folder (resolved recipe, metrics CSV, checkpoints, final model).

Exit codes: 0 trained (``model/`` written), 1 failure, 2 bad recipe or data, 130 stopped by
SIGINT (Ctrl-C), 143 stopped by SIGTERM. A stopped run keeps a checkpoint and prints the command
that resumes it; it writes no ``model/`` and runs no test evaluation unless
``--export-on-interrupt``. A signal before training starts or after it ends prints one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

HELP = "train a recipe; writes a run folder with the resolved recipe, metrics, checkpoints and the model"

#: exit status of a run stopped by a signal: 128 + the signal's number, as shells report it
EXIT_SIGNAL = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.epochs=3")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: <output_dir>/<name>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder from its last checkpoint")
    parser.add_argument("--verbose", action="store_true", help="keep third-party progress bars (model loading, downloads)")
    parser.add_argument(
        "--resume-force", action="store_true",
        help="resume even though the seed, batch size, process count or preprocessing changed (not exact)",
    )
    parser.add_argument(
        "--export-on-interrupt", action="store_true",
        help="when SIGTERM / Ctrl-C stops training, still run the test evaluation and write model/",
    )


class SignalledOutsideTraining(KeyboardInterrupt):
    """SIGTERM / SIGINT arrived while no fit was running (start-up, test evaluation, export)."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.name = signal.Signals(number).name


def _raise_signalled(number: int, frame: FrameType | None) -> None:
    raise SignalledOutsideTraining(number)


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_OK
    from mmfuse.cli.errors import report_errors

    # the fit installs its own handlers (checkpoint, then stop) and puts these back afterwards
    previous = {number: signal.signal(number, _raise_signalled) for number in (signal.SIGTERM, signal.SIGINT)}
    phase = "before training started; nothing was trained"
    if not args.verbose:
        from mmfuse.progress_bars import silence_third_party_progress_bars

        silence_third_party_progress_bars()
    try:
        from mmfuse.plugin_host import get_registry
        from mmfuse.recipe import load_recipe

        registry = get_registry()
        for failure in registry.broken:
            print(f"warning: {failure.describe()}", file=sys.stderr)
        with report_errors() as status:
            recipe = load_recipe(args.recipe, args.overrides, registry=registry)
            from mmfuse.run import train

            outcome = train(
                recipe, run_dir=args.run_dir, resume=args.resume, registry=registry,
                resume_force=args.resume_force, export_on_interrupt=args.export_on_interrupt,
            )
            phase = "after training; the last checkpoint is complete, model/ may be missing"
            if outcome.interrupted:
                print(_interrupted_message(args, outcome), file=sys.stderr)
                if outcome.model_dir is None:
                    return EXIT_SIGNAL.get(outcome.interrupted, EXIT_SIGNAL["SIGTERM"])
            for key, value in outcome.test_metrics.items():
                print(f"{key}: {value:.4f}")
            print(f"run folder: {outcome.run_dir}")
            print(f"model: {outcome.model_dir}  (mmfuse predict {outcome.run_dir} --data FILE --out preds.jsonl)")
            if outcome.interrupted:
                return EXIT_SIGNAL.get(outcome.interrupted, EXIT_SIGNAL["SIGTERM"])
            return EXIT_OK
        return status.code
    except SignalledOutsideTraining as stop:
        print(f"interrupted by {stop.name} {phase}", file=sys.stderr)
        return EXIT_SIGNAL[stop.name]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _interrupted_message(args: argparse.Namespace, outcome) -> str:
    fit = outcome.fit
    overrides = "".join(f" {override}" for override in args.overrides)
    written = "model/ written (--export-on-interrupt)" if outcome.model_dir else "no model/ written, no test evaluation"
    return (
        f"interrupted by {outcome.interrupted} at step {fit.global_step}: checkpoint {fit.last_checkpoint}; {written}.\n"
        f"resume with: mmfuse train {args.recipe}{overrides} --resume {outcome.run_dir}"
    )
