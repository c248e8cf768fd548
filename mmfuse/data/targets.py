"""Task targets seen from the data side: learning label vocabularies before the model is built.
Imports no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmfuse.data.manifest import Manifest

if TYPE_CHECKING:  # mmfuse.recipe imports mmfuse.data.config: import it lazily
    from mmfuse.recipe import Recipe

__all__ = ["fit_task_targets", "fittable_target"]


def fittable_target(recipe: Recipe) -> str | None:
    """The target column of the first task that learns a vocabulary from data (classification)."""
    for name, slot in recipe.tasks.items():
        if hasattr(slot.params, "fit_targets"):
            return recipe.target_of(name)
    return None


def fit_task_targets(recipe: Recipe, train: Manifest) -> None:
    """Let each task config learn from the training targets (``config.fit_targets(values)``).

    Updates ``recipe`` in place, so the resolved recipe saved with a run carries e.g. the labels.
    """
    for name, slot in recipe.tasks.items():
        fit = getattr(slot.params, "fit_targets", None)
        if fit is None:
            continue
        column = recipe.target_of(name)
        slot.params = fit([row.values.get(column) for row in train.rows])
