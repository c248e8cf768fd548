"""Manifests: one row per sample, read through the reader registry. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from mmfuse.data.errors import DataError
from mmfuse.registry import Registry, RegistryError

__all__ = ["Row", "Manifest", "read_manifest", "reader_name_for", "EXTENSION_READERS"]

#: file extension -> (reader name, default reader options)
EXTENSION_READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".jsonl": ("jsonl", {}),
    ".ndjson": ("jsonl", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
    ".arrow": ("hf_dataset", {}),
}


@dataclass(frozen=True)
class Row:
    """One sample: its line in the manifest and its column values (None or absent = missing)."""

    line: int
    values: dict[str, Any]


@dataclass
class Manifest:
    """The rows of one manifest file (or a split of it; line numbers stay those of the file)."""

    path: Path
    root: Path
    rows: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: Iterable[int]) -> "Manifest":
        return Manifest(self.path, self.root, [self.rows[i] for i in indices])

    def columns(self) -> set[str]:
        return {key for row in self.rows for key in row.values}

    def resolve(self, value: str) -> Path:
        """A media path from a row, relative to the data root unless absolute."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path


def reader_name_for(path: Path, format: str | None) -> tuple[str, dict[str, Any]]:
    if format:
        return format, {}
    suffix = path.suffix.lower()
    if suffix not in EXTENSION_READERS:
        known = ", ".join(sorted(EXTENSION_READERS))
        raise DataError(
            f"cannot tell the manifest format from the extension '{suffix}' (known: {known}); "
            f"set data.format (e.g. data.format=jsonl)",
            manifest=path,
        )
    return EXTENSION_READERS[suffix]


def read_manifest(
    path: str | Path,
    *,
    root: str | Path | None = None,
    format: str | None = None,
    reader_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
    role: str = "data",
) -> Manifest:
    """Read every row of a manifest; ``role`` (e.g. 'data.train') names it in errors."""
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{role} manifest {path.absolute()} is a folder, not a file; give the manifest file inside it "
            f"(a .jsonl, .csv or .tsv file)"
        )
    if not path.is_file():
        raise DataError(f"{role} manifest not found: {path.absolute()}")
    name, defaults = reader_name_for(path, format)
    try:
        spec = registry.get("reader", name)
    except RegistryError as exc:
        raise DataError(f"{exc} (data.format)", manifest=path) from exc
    try:
        config = spec.config.model_validate({**defaults, **(reader_options or {})})
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DataError(f"bad data.reader_options for reader '{spec.name}': {details}", manifest=path) from exc
    read = spec.build(config)
    try:
        rows = [Row(line, values) for line, values in read(path)]
    except (ValueError, OSError) as exc:
        # readers may say where (ManifestFormatError carries .line and .reason)
        line = getattr(exc, "line", None)
        reason = getattr(exc, "reason", None) if line is not None else None
        raise DataError(reason or f"cannot read manifest: {exc}", manifest=path, line=line) from exc
    if not rows:
        raise DataError(f"{role} manifest has no rows", manifest=path)
    return Manifest(path=path, root=Path(root) if root is not None else path.parent, rows=rows)
