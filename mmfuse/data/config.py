"""The ``data:`` section of a recipe. Imports no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SplitConfig", "DataConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Section):
    """Split one manifest into train / val / test by a seeded, stratified ratio."""

    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    stratify: str | None = Field(None, description="column to stratify on (usually the label)")
    seed: int = 0


class DataConfig(_Section):
    train: str | None = Field(None, description="manifest path, relative to the recipe file")
    val: str | None = None
    test: str | None = None
    root: str | None = Field(None, description="base folder of media paths; default: the manifest's folder")
    format: str | None = Field(None, description="reader name; default: from the file extension")
    split: SplitConfig | None = None
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = Field(0, ge=0)
    persistent_workers: bool = True
    prefetch_factor: int = Field(2, ge=1)
    pin_memory: bool = False
    on_bad_sample: Literal["error", "skip"] = "error"
