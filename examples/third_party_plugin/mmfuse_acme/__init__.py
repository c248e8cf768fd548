"""mmfuse-acme: an example third-party mmfuse plugin.

- ``acme/tabular``: an encoder for one row of tabular features (a mapping column -> value):
  numeric columns are standardised with their own mean/std and embedded per column, categorical
  columns get one embedding table each; every column becomes a token, a missing cell is masked.
- ``acme/max``: a fusion head that takes the element-wise maximum of the projected pooled vectors
  of the modalities present in each sample.

This module holds the config classes and the registration hook only; it imports no torch, so
``mmfuse plugins`` and ``mmfuse validate`` stay fast. The torch code lives in ``tabular.py`` and
``maxpool.py``, imported when a recipe uses the component.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse import hookimpl

__all__ = ["NumericColumn", "CategoricalColumn", "TabularEncoderConfig", "MaxFusionConfig"]
__version__ = "0.1.0"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumericColumn(_Strict):
    name: str
    mean: float = Field(0.0, description="subtracted before scaling")
    std: float = Field(1.0, gt=0, description="the value is divided by this")


class CategoricalColumn(_Strict):
    name: str
    categories: list[str] = Field(..., min_length=1, description="known values; others map to 'unknown'")


class TabularEncoderConfig(_Strict):
    numeric: list[NumericColumn] = Field(default_factory=list)
    categorical: list[CategoricalColumn] = Field(default_factory=list)
    output_dim: int = Field(32, gt=0, description="width of every column token and of the pooled vector")
    hidden_dim: int = Field(64, gt=0, description="width of the per-token MLP")
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _columns(self) -> "TabularEncoderConfig":
        names = [c.name for c in self.numeric] + [c.name for c in self.categorical]
        if not names:
            raise ValueError("acme/tabular needs at least one column under 'numeric' or 'categorical'")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"acme/tabular: columns {repeated} are listed twice")
        return self

    def conformance_samples(self, folder: Path | None) -> list[dict[str, Any]]:
        """Rows for mmfuse.testing: every column filled, plus one row with a missing number and an
        unknown category."""
        rows = []
        for index in range(3):
            row: dict[str, Any] = {c.name: c.mean + (index - 1) * c.std for c in self.numeric}
            row.update({c.name: c.categories[index % len(c.categories)] for c in self.categorical})
            rows.append(row)
        if self.numeric and len(self.numeric) + len(self.categorical) > 1:
            rows[2][self.numeric[0].name] = None
        for column in self.categorical:
            rows[1][column.name] = "never-seen"
        return rows


class MaxFusionConfig(_Strict):
    projection_dim: int = Field(32, gt=0, description="each pooled vector is projected to this size")
    output_dim: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "acme/tabular",
        builder="mmfuse_acme.tabular:build_tabular_encoder",
        config=TabularEncoderConfig,
        description="tabular row (numeric + categorical columns) -> one token per column",
    )


@hookimpl
def mmfuse_register_fusions(register) -> None:
    register(
        "acme/max",
        builder="mmfuse_acme.maxpool:build_max_fusion",
        config=MaxFusionConfig,
        description="element-wise max of projected pooled vectors over present modalities",
    )
