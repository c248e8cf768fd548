"""Few-shot training sets: ``data.shots_per_class: k`` keeps exactly k training rows per class.
Imports no torch.

The draw is seeded and stratified. Each row gets a key ``blake2b(seed, row content)`` and each
class keeps its k rows with the smallest keys, so the rows kept depend only on the rows' content,
k and the seed: not on the order of the manifest's rows, not on the process (every DDP rank draws
the same rows before the sampler shards them), and the sets are nested (the 1-shot rows are among
the 5-shot rows, which are among the 20-shot rows) so a few-shot curve varies k alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Mapping

from mmfuse.data.errors import DataError
from mmfuse.data.manifest import Manifest

if TYPE_CHECKING:  # mmfuse.recipe imports mmfuse.data.config: import it lazily
    from mmfuse.recipe import Recipe

__all__ = ["ShotsSummary", "shots_column", "class_columns", "class_column_problem", "keep_shots"]


@dataclass
class ShotsSummary:
    """What ``data.shots_per_class`` kept: the class column, the seed, and per class the rows
    available in the training split and the rows kept."""

    shots_per_class: int
    column: str
    seed: int
    available: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0  # training rows without a value in the column: left out

    def describe(self) -> str:
        classes = ", ".join(f"{label}: {self.kept[label]} of {self.available[label]}" for label in self.kept)
        text = (
            f"few-shot: data.shots_per_class={self.shots_per_class} (classes from column '{self.column}', seed "
            f"{self.seed}) kept {sum(self.kept.values())} of {sum(self.available.values())} training rows ({classes})"
        )
        if self.unlabelled:
            text += f"; left out {self.unlabelled} row(s) without a '{self.column}' value"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "shots_per_class": self.shots_per_class, "column": self.column, "seed": self.seed,
            "available": dict(self.available), "kept": dict(self.kept), "unlabelled": self.unlabelled,
        }


def shots_column(recipe: Recipe) -> str:
    """The column whose values are the classes: ``data.shots_column``, else the target of the one
    single-label classification task (configs with ``single_label_classes``). A DataError when
    there is none or several."""
    if recipe.data.shots_column is not None:
        return recipe.data.shots_column
    targets = {name: (recipe.target_of(name), slot.params) for name, slot in recipe.tasks.items()}
    columns = class_columns(targets)
    problem = class_column_problem(columns)
    if problem is not None:
        raise DataError(problem)
    return next(iter(columns))


def class_columns(targets: Mapping[str, tuple[str, Any]]) -> dict[str, list[str]]:
    """``{task: (target column, config)}`` -> the target columns of single-label classification
    tasks, each with the tasks reading it."""
    columns: dict[str, list[str]] = {}
    for name, (column, params) in targets.items():
        if getattr(type(params), "single_label_classes", False):
            columns.setdefault(column, []).append(name)
    return columns


def class_column_problem(columns: Mapping[str, list[str]]) -> str | None:
    """Why ``data.shots_per_class`` cannot tell its class column without ``data.shots_column``
    (none, or several candidates), or None when there is exactly one."""
    if len(columns) == 1:
        return None
    if not columns:
        return (
            "data.shots_per_class needs classes, but the recipe has no single-label classification task "
            "(classification, prototype); set data.shots_column to the column that holds the classes"
        )
    listed = ", ".join(f"'{column}' (tasks {', '.join(names)})" for column, names in columns.items())
    return f"data.shots_per_class: the classes could come from several columns: {listed}; set data.shots_column to one of them"


def _row_key(seed: int, values: dict[str, Any]) -> bytes:
    content = json.dumps(values, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.blake2b(f"{seed}\x00{content}".encode(), digest_size=16).digest()


def _class_key(value: Any) -> Hashable:
    return repr(value) if isinstance(value, (list, dict)) else value


def keep_shots(train: Manifest, k: int, column: str, seed: int) -> tuple[Manifest, ShotsSummary]:
    """The rows of ``train`` that ``data.shots_per_class: k`` keeps (manifest order), and what was
    kept. A DataError naming the key when the column is absent or a class has fewer than k rows."""
    if column not in train.columns():
        raise DataError(
            f"data.shots_per_class: no training row has the class column '{column}' (columns: "
            f"{sorted(train.columns())}); set data.shots_column to the column that holds the classes",
            manifest=train.path,
        )
    groups: dict[Hashable, list[tuple[bytes, int]]] = {}
    unlabelled = 0
    for index, row in enumerate(train.rows):
        value = row.values.get(column)
        if value is None:
            unlabelled += 1
            continue
        groups.setdefault(_class_key(value), []).append((_row_key(seed, row.values), index))
    short = {label: len(members) for label, members in groups.items() if len(members) < k}
    if short:
        listed = ", ".join(f"{label!r}: {count}" for label, count in sorted(short.items(), key=lambda item: repr(item[0])))
        raise DataError(
            f"data.shots_per_class={k}, but {len(short)} class(es) of column '{column}' have fewer training rows: "
            f"{listed}. Lower data.shots_per_class to at most {min(short.values())}, or add rows",
            manifest=train.path,
        )
    summary = ShotsSummary(shots_per_class=k, column=column, seed=seed, unlabelled=unlabelled)
    kept: list[int] = []
    for label in sorted(groups, key=repr):  # stable report order, whatever the manifest order
        members = sorted(groups[label])  # by seeded key; equal keys are equal rows
        kept += [index for _, index in members[:k]]
        summary.available[str(label)] = len(members)
        summary.kept[str(label)] = min(k, len(members))
    return train.subset(sorted(kept)), summary
