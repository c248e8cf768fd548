"""JSONL and CSV manifest readers: ``read(path) -> iterator of (line number, row dict)``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from mmfuse_plugins.readers import CsvReaderConfig

__all__ = ["ManifestFormatError", "read_jsonl", "build_jsonl_reader", "build_csv_reader"]

Reader = Callable[[Path], Iterator[tuple[int, dict[str, Any]]]]


class ManifestFormatError(ValueError):
    """A manifest line that is not a valid row; ``path`` and ``line`` say where."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path} line {line}: {reason}")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestFormatError(path, number, f"invalid JSON ({exc.msg}, character {exc.colno})") from exc
        except RecursionError as exc:
            raise ManifestFormatError(path, number, "JSON nested too deeply to be a manifest row") from exc
        if not isinstance(row, dict):
            raise ManifestFormatError(path, number, f"expected a JSON object, got {type(row).__name__}")
        yield number, row


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines, numbered from 1, each decoded as UTF-8 on its own so that a bad byte is
    reported with its line (a text-mode file would fail somewhere in a read buffer)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestFormatError(
                    path,
                    number,
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at character {exc.start + 1}); "
                    f"save the manifest as UTF-8",
                ) from exc


def build_jsonl_reader(config: Any) -> Reader:
    return read_jsonl


def build_csv_reader(config: CsvReaderConfig) -> Reader:
    def read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        last_line = [0]  # the line the csv module read last: where a csv.Error happened

        def lines() -> Iterator[str]:
            # lines keep their endings: the csv module needs them to see newlines inside quotes
            for number, line in _utf8_lines(path):
                last_line[0] = number
                yield line

        reader = csv.DictReader(lines(), delimiter=config.delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ManifestFormatError(path, last_line[0], _csv_problem(exc)) from exc
            if None in row:
                raise ManifestFormatError(path, reader.line_num, "more fields than the header has columns")
            # empty cells mean "missing", like an absent key in JSONL
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}

    return read_csv


def _csv_problem(exc: Exception) -> str:
    if "field larger than field limit" in str(exc):
        return (
            f"a cell is longer than {csv.field_size_limit()} characters (often an unclosed quote that "
            f"swallows the rest of the file); close the quote, or put long text in a file the row names"
        )
    return f"not valid CSV ({exc})"
