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
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestFormatError(path, number, f"invalid JSON ({exc.msg}, character {exc.colno})") from exc
            if not isinstance(row, dict):
                raise ManifestFormatError(path, number, f"expected a JSON object, got {type(row).__name__}")
            yield number, row


def build_jsonl_reader(config: Any) -> Reader:
    return read_jsonl


def build_csv_reader(config: CsvReaderConfig) -> Reader:
    def read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=config.delimiter)
            for row in reader:
                if None in row:
                    raise ManifestFormatError(path, reader.line_num, "more fields than the header has columns")
                # empty cells mean "missing", like an absent key in JSONL
                yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}

    return read_csv
