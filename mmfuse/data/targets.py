"""Task targets seen from the data side: learning label vocabularies before the model is built.
Imports no torch."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mmfuse.data.errors import DataError
from mmfuse.data.manifest import Manifest

if TYPE_CHECKING:  # mmfuse.recipe imports mmfuse.data.config: import it lazily
    from mmfuse.recipe import Recipe

__all__ = ["fit_task_targets", "fittable_target"]

log = logging.getLogger("mmfuse.data")


def fittable_target(recipe: Recipe) -> str | None:
    """The target column of the first task that learns a vocabulary from data (classification)."""
    for name, slot in recipe.tasks.items():
        # a per-word tag sequence is nearly unique per row: no use as a stratification key
        if hasattr(slot.params, "fit_targets") and getattr(slot.params, "stratify_split", True):
            return recipe.target_of(name)
    return None


def fit_task_targets(recipe: Recipe, train: Manifest) -> None:
    """Let each task config learn from the training targets (``config.fit_targets(values)``).

    Updates ``recipe`` in place, so the resolved recipe saved with a run carries e.g. the labels.
    A ``fit_targets`` that raises ValueError / TypeError, or a learned config that no longer
    validates (one label for a classifier), becomes a DataError naming the task, the column and the
    manifest. A vocabulary that mixes numbers and text is logged as a warning.
    """
    for name, slot in recipe.tasks.items():
        fit = getattr(slot.params, "fit_targets", None)
        if fit is None:
            continue
        column = recipe.target_of(name)
        values = [row.values.get(column) for row in train.rows]
        try:
            fitted = fit(values)
            # fit_targets usually returns model_copy(update=...), which skips validation
            type(fitted).model_validate(fitted.model_dump())
        except ValidationError as exc:
            raise _fit_error(name, column, train, _validation_reason(exc, fitted)) from exc
        except (ValueError, TypeError) as exc:
            raise _fit_error(name, column, train, str(exc)) from exc
        _warn_mixed_labels(name, column, getattr(fitted, "labels", None), train)
        slot.params = fitted


def _fit_error(task: str, column: str, train: Manifest, reason: str) -> DataError:
    return DataError(
        f"task '{task}' cannot learn from the training targets: {reason}. "
        f"Fix the target column, or give the vocabulary in the recipe (tasks.{task}).",
        manifest=train.path,
        column=column,
    )


def _validation_reason(exc: ValidationError, fitted: Any) -> str:
    labels = getattr(fitted, "labels", None)
    if isinstance(labels, list) and len(labels) == 1:
        return f"every row has the same label {labels[0]!r}, and a classifier needs at least 2 classes"
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _warn_mixed_labels(task: str, column: str, labels: Any, train: Manifest) -> None:
    """Text labels plus a few numbers usually mean a typo or an id in the label column; each number
    silently becomes a class of its own, so say where."""
    if not isinstance(labels, list) or not any(isinstance(label, str) for label in labels):
        return
    numbers = [label for label in labels if _is_number(label)]
    if not numbers:
        return
    line = next(row.line for row in train.rows if _is_number(row.values.get(column)))
    log.warning(
        "%s, column '%s': task '%s' learned text labels and number labels %s (first at line %d); "
        "each number becomes a class of its own. Quote it if it is meant as text, or fix the row.",
        train.path, column, task, numbers[:5], line,
    )
