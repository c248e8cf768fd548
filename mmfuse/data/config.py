"""The ``data:`` section of a recipe. Imports no torch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SplitConfig", "DataConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Section):
    """Split one manifest into train / val / test by a seeded, stratified ratio."""

    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    stratify: str | None = Field(
        None, description="column to stratify on; default: the target of the first classification task"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "SplitConfig":
        if self.val + self.test >= 1:
            raise ValueError(f"split.val + split.test must be below 1 (got {self.val} + {self.test})")
        return self


class DataConfig(_Section):
    train: str | None = Field(None, description="manifest path, relative to the recipe file")
    val: str | None = None
    test: str | None = None
    root: str | None = Field(
        None, description="base folder of relative media paths (relative to the recipe file); default: each manifest's folder"
    )
    format: str | None = Field(None, description="reader name (jsonl, csv, ...); default: from the file extension")
    reader_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the reader, e.g. {delimiter: ';'} for csv"
    )
    split: SplitConfig | None = None
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    shuffle: bool = True
    drop_last: bool = False
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes per training process; 'auto': chosen from the cores, "
        "the processes on this machine, the dataset's size and the sample cache, printed at start (docs/performance.md)",
    )
    persistent_workers: bool = True
    prefetch_factor: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="batches each worker loads ahead; 'auto': 2, more with a single worker (needs workers)"
    )
    pin_memory: bool = Field(True, description="page-locked batches for non-blocking copies to a GPU (no effect without CUDA)")
    on_bad_sample: Literal["error", "skip"] = "error"
    cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="preprocessed-sample cache: memory, disk (shared by workers, ranks and runs), off; "
        "auto = memory without DataLoader workers unless the disk cache is warm, else disk (docs/performance.md)",
    )
    cache_dir: str | None = Field(
        None, description="disk cache folder (relative to the recipe file); default $MMFUSE_CACHE_DIR or ~/.cache/mmfuse"
    )
    cache_memory_mb: float = Field(2048, gt=0, description="most memory the memory cache holds per process")
    feature_cache: Literal["auto", "off"] = Field(
        "off", description="auto: train from cached outputs of frozen, deterministic encoders (docs/performance.md)"
    )
    check_files: bool = Field(
        True, description="check before training that every referenced media file exists"
    )
    # few-shot (docs/pretraining.md#few-shot): the training split only; validation and test are untouched
    shots_per_class: int | None = Field(
        None, ge=1, description="keep exactly k training rows per class (seeded, stratified); a class with fewer is an error"
    )
    shots_column: str | None = Field(
        None, description="column holding the classes of shots_per_class; default: the target of the one classification task"
    )
    shots_seed: int | None = Field(None, description="seed of the shots_per_class draw; default: the recipe's seed")

    @field_validator("cache", "feature_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` / `on` as a boolean
        if value is False:
            return "off"
        if value is True:
            return "auto"
        return value

    @field_validator("num_workers", "prefetch_factor", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any, info: Any) -> Any:
        least = 0 if info.field_name == "num_workers" else 1
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            return value
        raise ValueError(f"data.{info.field_name} must be auto or a whole number >= {least}, got {value!r}")

    @model_validator(mode="after")
    def _prefetch_needs_workers(self) -> "DataConfig":
        if self.num_workers == 0 and self.prefetch_factor != "auto":
            raise ValueError(
                f"data.prefetch_factor={self.prefetch_factor} needs DataLoader workers, but data.num_workers is 0 "
                "(the main process loads each batch when it is needed); remove prefetch_factor or set num_workers"
            )
        return self

    @model_validator(mode="after")
    def _shots_options_need_shots(self) -> "DataConfig":
        if self.shots_per_class is None and (self.shots_column is not None or self.shots_seed is not None):
            raise ValueError("data.shots_column and data.shots_seed apply only with data.shots_per_class: set it (e.g. 5)")
        return self

    @model_validator(mode="after")
    def _one_source_per_split(self) -> "DataConfig":
        if self.split is not None:
            if self.val is not None and self.split.val > 0:
                raise ValueError("give either data.val (a file) or data.split.val (a ratio), not both")
            if self.test is not None and self.split.test > 0:
                raise ValueError("give either data.test (a file) or data.split.test (a ratio), not both")
        return self
