"""``mmfuse verify MODEL_DIR``: check every file of a model folder against its manifest."""

from __future__ import annotations

import argparse
import sys

HELP = "check that a model folder (or run folder) holds exactly the files it was saved with (exit 0 ok, 2 not)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder written by mmfuse.save, or a run folder holding model/")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.folder_manifest import ModelFolderError, check_folder, read_manifest, resolve_model_dir

    try:
        model_dir = resolve_model_dir(args.model)
        check = check_folder(model_dir, read_manifest(model_dir))
    except ModelFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(check.summary(), file=sys.stdout if check.ok else sys.stderr)
    return EXIT_OK if check.ok else EXIT_BAD_INPUT
