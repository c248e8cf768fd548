"""Columnar manifests: Parquet files (pyarrow) and Hugging Face ``datasets`` saved to disk.

Both yield ``(row number, row dict)`` like the JSONL and CSV readers; the "line" of a row is its
1-based position, so errors say "row 12". Values become plain Python (lists, numbers, strings,
None). Media columns hold file paths, as in any manifest; a ``datasets`` Image or Audio feature
is read as its file path (embedded bytes with no file are an error naming the row and column:
save the files and store their paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mmfuse_plugins.readers import HFDatasetReaderConfig, ParquetReaderConfig
from mmfuse_plugins.readers.manifests import ManifestFormatError, Reader

__all__ = ["build_parquet_reader", "build_hf_dataset_reader"]


def _missing(path: Path, package: str, extra: str) -> ManifestFormatError:
    return ManifestFormatError(
        path, 1, f"reading this manifest needs the {package} package: pip install 'mmfuse[{extra}]' (or pip install {package})"
    )


def build_parquet_reader(config: ParquetReaderConfig) -> Reader:
    def read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise _missing(path, "pyarrow", "parquet") from exc
        try:
            table = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own ArrowInvalid etc.
            raise ManifestFormatError(path, 1, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
        columns = config.columns or None
        number = 0
        for batch in table.iter_batches(batch_size=config.batch_rows, columns=columns):
            for row in batch.to_pylist():
                number += 1
                yield number, row

    return read_parquet


def build_hf_dataset_reader(config: HFDatasetReaderConfig) -> Reader:
    def read_hf_dataset(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            import datasets
        except ImportError as exc:
            raise _missing(path, "datasets", "hf-datasets") from exc
        folder = path.parent if path.is_file() else path  # the folder, or a file inside it
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ...
            raise ManifestFormatError(path, 1, f"not a dataset saved with save_to_disk ({type(exc).__name__}: {exc})") from exc
        if isinstance(loaded, datasets.DatasetDict):
            if config.split is None:
                raise ManifestFormatError(path, 1, f"a DatasetDict: choose a split with data.reader_options.split (one of {sorted(loaded)})")
            if config.split not in loaded:
                raise ManifestFormatError(path, 1, f"no split '{config.split}' (splits: {sorted(loaded)})")
            loaded = loaded[config.split]
        media = [name for name, feature in loaded.features.items() if type(feature).__name__ in ("Image", "Audio", "Video")]
        for name in media:
            loaded = loaded.cast_column(name, type(loaded.features[name])(decode=False))
        for number, row in enumerate(loaded, start=1):
            for name in media:
                row[name] = _media_path(row[name], path, number, name)
            yield number, row

    return read_hf_dataset


def _media_path(value: Any, path: Path, number: int, column: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
        return value["path"]
    if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
        return value["path"]
    raise ManifestFormatError(
        path, number, f"column '{column}' holds embedded media bytes with no file; save the files and store their paths"
    )
