"""Built-in manifest readers: JSONL, CSV, Parquet and Hugging Face datasets saved to disk (one row
per sample). Registration only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["CsvReaderConfig", "ParquetReaderConfig", "HFDatasetReaderConfig"]


class CsvReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delimiter: str = Field(",", min_length=1, max_length=1)


class ParquetReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = Field(None, description="read only these columns (default: all)")
    batch_rows: int = Field(10_000, gt=0, description="rows decoded at a time")


class HFDatasetReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str | None = Field(None, description="split of a DatasetDict (e.g. train); not needed for a Dataset")


@hookimpl
def mmfuse_register_readers(register) -> None:
    register(
        "mmfuse/jsonl",
        builder="mmfuse_plugins.readers.manifests:build_jsonl_reader",
        description="JSON Lines manifest, one object per line",
    )
    register(
        "mmfuse/csv",
        builder="mmfuse_plugins.readers.manifests:build_csv_reader",
        config=CsvReaderConfig,
        description="CSV manifest with a header row",
    )
    register(
        "mmfuse/parquet",
        builder="mmfuse_plugins.readers.columnar:build_parquet_reader",
        config=ParquetReaderConfig,
        description="Parquet file, one row per sample (needs pyarrow: mmfuse[parquet])",
    )
    register(
        "mmfuse/hf_dataset",
        builder="mmfuse_plugins.readers.columnar:build_hf_dataset_reader",
        config=HFDatasetReaderConfig,
        description="Hugging Face dataset saved with save_to_disk (needs datasets: mmfuse[hf-datasets])",
    )
