"""The ``mmfuse`` command. Sub-commands live one per module and import torch only when run.

Exit codes: 0 ok, 2 bad recipe or input, 1 failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

__all__ = ["main", "COMMANDS", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

#: sub-command -> module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "train": "mmfuse.cli.train",
    "chain": "mmfuse.cli.chain",
    "tune": "mmfuse.cli.tune",
    "eval": "mmfuse.cli.eval",
    "predict": "mmfuse.cli.predict",
    "demo": "mmfuse.cli.demo",
    "validate": "mmfuse.cli.validate",
    "plugins": "mmfuse.cli.plugins",
    "export": "mmfuse.cli.export",
    "cache": "mmfuse.cli.cache",
    "profile": "mmfuse.cli.profile",
    "quantize": "mmfuse.cli.quantize",
    "report": "mmfuse.cli.report",
    "explain": "mmfuse.cli.explain",
    "verify": "mmfuse.cli.verify",
}


def build_parser() -> argparse.ArgumentParser:
    from mmfuse import __version__

    parser = argparse.ArgumentParser(
        prog="mmfuse", description="Compose multimodal models from plugins and train them."
    )
    parser.add_argument("--version", action="version", version=f"mmfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `key=value` overrides may stand anywhere, also after options (`--run-dir X a.b=1`)
        overrides = [item for item in extra if "=" in item and not item.startswith("-")]
        unknown = [item for item in extra if item not in overrides]
        if overrides and isinstance(getattr(args, "overrides", None), list):
            args.overrides.extend(overrides)
        else:
            unknown = extra
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`mmfuse plugins | head`): not a failure; silence the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
