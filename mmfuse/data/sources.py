"""Where a recipe's data comes from: the train / val / test manifests, or one manifest split by a
seeded, stratified ratio, and the few-shot training subset (``data.shots_per_class``). Paths in the recipe are relative to the recipe file. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmfuse.data.errors import DataError
from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.data.shots import ShotsSummary, keep_shots, shots_column
from mmfuse.data.split import stratified_split
from mmfuse.data.targets import fittable_target

if TYPE_CHECKING:  # mmfuse.recipe imports mmfuse.data.config: import it lazily
    from mmfuse.recipe import Recipe
    from mmfuse.registry import Registry

__all__ = ["DataSplits", "load_splits", "recipe_folder", "resolve_data_path"]


@dataclass
class DataSplits:
    train: Manifest
    val: Manifest | None = None
    test: Manifest | None = None
    #: what ``data.shots_per_class`` kept of the training split (None without it)
    shots: ShotsSummary | None = None


def recipe_folder(recipe: Recipe) -> Path:
    """Base of the recipe's relative paths: the recipe file's folder, or the working directory."""
    return recipe.source_path.parent if recipe.source_path is not None else Path.cwd()


def resolve_data_path(recipe: Recipe, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else recipe_folder(recipe) / path


def load_splits(recipe: Recipe, registry: Registry | None = None) -> DataSplits:
    """Read the recipe's manifests and apply ``data.split``; raise DataError on bad data."""
    data = recipe.data
    if data.train is None:
        raise DataError("the recipe has no training data: set data.train (a manifest path, relative to the recipe)")
    root = resolve_data_path(recipe, data.root) if data.root else None

    def read(value: str | None, role: str) -> Manifest | None:
        if value is None:
            return None
        return read_manifest(
            resolve_data_path(recipe, value),
            root=root,
            format=data.format,
            reader_options=data.reader_options,
            registry=registry,
            role=role,
        )

    splits = DataSplits(train=read(data.train, "data.train"), val=read(data.val, "data.val"), test=read(data.test, "data.test"))  # type: ignore[arg-type]
    if data.split is not None and (data.split.val > 0 or data.split.test > 0):
        splits = _split(recipe, splits)
    if data.shots_per_class is not None:  # after the split: validation rows are never few-shot
        seed = data.shots_seed if data.shots_seed is not None else recipe.seed
        splits.train, splits.shots = keep_shots(splits.train, data.shots_per_class, shots_column(recipe), seed)
    return splits


def _split(recipe: Recipe, splits: DataSplits) -> DataSplits:
    config = recipe.data.split
    assert config is not None
    column = config.stratify or fittable_target(recipe)
    train = splits.train
    if column is not None and column not in train.columns():
        raise DataError(
            f"data.split.stratify names column '{column}', which no row has; columns: {sorted(train.columns())}",
            manifest=train.path,
        )
    keys = [row.values.get(column) for row in train.rows] if column else [0] * len(train)
    train_rows, val_rows, test_rows = stratified_split(keys, config.val, config.test, config.seed)
    if config.val > 0 and not val_rows:
        raise DataError(
            f"data.split.val={config.val} of {len(train)} rows leaves no validation rows; raise the ratio or add rows",
            manifest=train.path,
        )
    return DataSplits(
        train=train.subset(train_rows),
        val=train.subset(val_rows) if config.val > 0 else splits.val,
        test=train.subset(test_rows) if config.test > 0 else splits.test,
    )
