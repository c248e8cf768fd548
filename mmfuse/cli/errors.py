"""How CLI commands report failures: user errors (bad recipe, bad data, bad model folder) as one
clean message and exit code 2; anything else with its traceback and exit code 1."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["ExitStatus", "report_errors", "user_error_types"]


@dataclass
class ExitStatus:
    code: int = 0


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions caused by the user's input, not by a bug."""
    from mmfuse.data.errors import DataError
    from mmfuse.plugin_host import PluginLoadError
    from mmfuse.recipe import RecipeError
    from mmfuse.registry import UnknownComponentError

    # PluginLoadError: MMFUSE_STRICT_PLUGINS refused a broken or clashing plugin
    types: list[type[BaseException]] = [RecipeError, DataError, UnknownComponentError, PluginLoadError]
    try:
        from mmfuse.artifact import ModelFolderError

        types.append(ModelFolderError)
    except ImportError:  # the model-folder module needs torch; absent only in broken installs
        pass
    try:
        from mmfuse.engine.checkpoint import CheckpointError

        types.append(CheckpointError)
    except ImportError:
        pass
    return tuple(types)


@contextmanager
def report_errors() -> Iterator[ExitStatus]:
    """Run a command body; on an exception print it and set the exit status (2 user, 1 failure)."""
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_FAILURE
    from mmfuse.data.errors import describe_error

    status = ExitStatus()
    try:
        yield status
    except KeyboardInterrupt:
        raise
    except user_error_types() as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        status.code = EXIT_BAD_INPUT
    except ImportError as exc:
        if "pip install" not in str(exc):
            traceback.print_exc()
        # an optional extra that is not installed: its message names what to install
        print(f"error: {exc}", file=sys.stderr)
        status.code = EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        status.code = EXIT_FAILURE

