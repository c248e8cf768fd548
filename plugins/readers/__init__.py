"""Built-in manifest readers: JSONL and CSV (one row per sample). Registration only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["CsvReaderConfig"]


class CsvReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delimiter: str = Field(",", min_length=1, max_length=1)


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
