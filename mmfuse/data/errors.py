"""Errors about input data. Each names the manifest, the line and the column. Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["DataError", "describe_error"]

#: at most this many problems are listed in one message; the rest are counted
MAX_LISTED = 10


class DataError(ValueError):
    """A manifest, a row or a file that cannot be used.

    Constructible from a message alone, because PyTorch re-raises a worker's exception in the main
    process as ``type(exc)(text)``.
    """

    def __init__(
        self,
        message: str,
        *,
        manifest: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = message
        self.manifest = str(manifest) if manifest is not None else None
        self.line = line
        self.column = column
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.manifest:
            where.append(self.manifest)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if not where:
            return self.reason
        head = " ".join(where[:2]) + (f", {where[2]}" if len(where) > 2 else "")
        return f"{head}: {self.reason}"

    @classmethod
    def combine(cls, problems: Sequence["DataError"], hint: str = "") -> "DataError":
        """One error listing several problems (the first ``MAX_LISTED``), with an optional fix."""
        if len(problems) == 1:
            first = problems[0]
            if not hint:
                return first
            return cls(f"{first.reason}\n{hint}", manifest=first.manifest, line=first.line, column=first.column)
        listed = "".join(f"\n  - {p}" for p in problems[:MAX_LISTED])
        more = len(problems) - MAX_LISTED
        if more > 0:
            listed += f"\n  ... and {more} more"
        head = f"{len(problems)} bad sample{'s' if len(problems) != 1 else ''}:"
        error = cls(head + listed + (f"\n{hint}" if hint else ""))
        first = problems[0]
        error.manifest, error.line, error.column = first.manifest, first.line, first.column
        return error


def describe_error(exc: BaseException) -> str:
    """The user-facing text of a data error, without the worker traceback PyTorch prepends."""
    text = str(exc)
    marker = "Original Traceback (most recent call last):"
    if marker not in text:
        return text
    # the worker's message follows the last "<module>.DataError: " of the copied traceback
    tail = text.split(marker, 1)[1]
    name = f"{type(exc).__name__}: "
    if name in tail:
        return tail.rsplit(name, 1)[1].strip()
    return tail.strip().splitlines()[-1]
