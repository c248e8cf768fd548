"""Entity-level precision / recall / F1 over BIO tag sequences, as seqeval's default (conlleval)
mode counts them: an entity is a maximal run that starts at ``B-X`` (or at an ``I-X`` that does
not continue an ``X`` entity) and continues over ``I-X``; a prediction counts only if its type,
start and end all match a gold entity. Tags without a ``B-``/``I-`` prefix other than ``O`` are
read as ``I-`` tags (IO scheme)."""

from __future__ import annotations

from typing import Sequence

import torch
import torchmetrics

__all__ = ["bio_entities", "EntityScores", "ENTITY_VALUES"]


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "I", tag


def bio_entities(tags: Sequence[str | None]) -> set[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, start, end)`` word spans (end exclusive).
    ``None`` (a word the model did not see) reads as ``O``."""
    entities: set[tuple[str, int, int]] = set()
    start: int | None = None
    kind = ""
    for position, tag in enumerate([*tags, "O"]):
        prefix, tag_type = _split(tag or "O")
        if start is not None and (prefix in ("B", "O") or tag_type != kind):
            entities.add((kind, start, position))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = position, tag_type
    return entities


#: the values EntityScores can report
ENTITY_VALUES = ("entity_precision", "entity_recall", "entity_f1", "word_accuracy")


class EntityScores(torchmetrics.Metric):
    """One of micro-averaged entity precision / recall / F1 or word accuracy (``value``) over tag
    sequences; counts are synchronised across processes."""

    full_state_update = False

    def __init__(self, value: str) -> None:
        super().__init__()
        if value not in ENTITY_VALUES:
            raise ValueError(f"EntityScores value must be one of {ENTITY_VALUES}, got {value!r}")
        self.value = value
        for name in ("matched", "predicted", "gold", "words_right", "words"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[Sequence[str | None]], golds: Sequence[Sequence[str]]) -> None:
        for predicted, gold in zip(predictions, golds):
            predicted_entities, gold_entities = bio_entities(predicted), bio_entities(gold)
            self.matched += len(predicted_entities & gold_entities)
            self.predicted += len(predicted_entities)
            self.gold += len(gold_entities)
            self.words_right += sum(p == g for p, g in zip(predicted, gold))
            self.words += len(gold)

    def compute(self) -> torch.Tensor:
        precision = self.matched / self.predicted.clamp_min(1.0)
        recall = self.matched / self.gold.clamp_min(1.0)
        values = {
            "entity_precision": precision,
            "entity_recall": recall,
            "entity_f1": 2 * precision * recall / (precision + recall).clamp_min(1e-12),
            "word_accuracy": self.words_right / self.words.clamp_min(1.0),
        }
        return values[self.value].float()
