"""Letting preprocessors learn from the training split once, before training (the optional
``Preprocessor.fit`` contract): vocabularies, ``mean: auto`` / ``mel_mean: auto`` statistics.

What a preprocessor learns is written back into the recipe (like the labels a classification task
learns), so the run's resolved recipe records it; the encoder's ``export_assets`` records it in
the model folder, so predictions use the same numbers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from mmfuse.contracts import Preprocessor, SampleError
from mmfuse.data.dataset import READ_ERRORS, ManifestDataset

if TYPE_CHECKING:
    from mmfuse.recipe import Recipe

__all__ = ["fits", "training_values", "fit_preprocessors", "evenly_spaced", "readable_items"]

log = logging.getLogger("mmfuse.data")


def fits(preprocessor: Preprocessor) -> bool:
    """True when ``preprocessor`` overrides ``Preprocessor.fit``."""
    return type(preprocessor).fit is not Preprocessor.fit


def training_values(dataset: ManifestDataset, encoder: str) -> list[Any]:
    """The raw values of ``encoder``'s column in ``dataset``: rows lacking it and rows already
    marked as skipped left out, file paths resolved against the manifest."""
    column = dataset.columns[encoder]
    reads_files = dataset.preprocessors[encoder].reads_files
    skipped = getattr(dataset, "_skip_reasons", {})
    values = []
    for index, row in enumerate(dataset.manifest.rows):
        value = row.values.get(column)
        if value is None or index in skipped:
            continue
        values.append(str(dataset.manifest.resolve(value)) if reads_files and isinstance(value, str) else value)
    return values


def fit_preprocessors(recipe: "Recipe", dataset: ManifestDataset) -> dict[str, dict[str, Any]]:
    """Call ``fit`` on each of ``dataset``'s preprocessors that has one, with its training values;
    fold the learned config values into ``recipe`` (in place). Returns them per encoder."""
    learned: dict[str, dict[str, Any]] = {}
    for name, preprocessor in dataset.preprocessors.items():
        if not fits(preprocessor):
            continue
        overrides = dict(preprocessor.fit(training_values(dataset, name)) or {})
        learned[name] = overrides
        slot = recipe.encoders.get(name)
        if overrides and slot is not None and slot.params is not None:
            slot.params = type(slot.params).model_validate({**slot.params.model_dump(mode="json"), **overrides})
        if overrides:
            log.info("encoders.%s: learned from the training split: %s", name, overrides)
    return learned


def evenly_spaced(values: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``values``, spread evenly over the sequence (deterministic)."""
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


def readable_items(preprocessor: Preprocessor, values: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """``preprocessor(value)`` for each value; unreadable values are left out with one warning
    (the dataset reports them with their manifest line when training reaches them)."""
    failed = 0
    for value in values:
        try:
            yield preprocessor(value)
        except (SampleError, *READ_ERRORS) as exc:
            failed += 1
            if failed == 1:
                log.warning("learning statistics: left out unreadable %s value %r: %s", preprocessor.modality, value, exc)
    if failed > 1:
        log.warning("learning statistics: left out %d unreadable %s values in all", failed, preprocessor.modality)
