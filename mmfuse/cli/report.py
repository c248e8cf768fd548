"""``mmfuse report RUN [--data FILE] [--out FILE]``: (re)build a run's self-contained report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build report.html for a run: curves, confusion matrices, calibration, modality ablation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder of `mmfuse train`")
    parser.add_argument("--data", type=Path, help="labelled manifest to analyse (default: the run's validation split)")
    parser.add_argument("--out", type=Path, help="output file (default: RUN/report.html)")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        from mmfuse.plugin_host import get_registry
        from mmfuse.run_report import build_report

        path = build_report(args.run, data=args.data, registry=get_registry(), out=args.out)
        print(f"report: {path}")
        return EXIT_OK
    return status.code
