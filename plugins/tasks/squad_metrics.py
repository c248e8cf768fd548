"""Exact match and token F1 of extractive QA, as defined by the official SQuAD v1.1 evaluation
script: answers are normalised (lower case, punctuation and the articles a/an/the removed,
whitespace collapsed), and a prediction scores the best match over the gold answers."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import torch
import torchmetrics

__all__ = ["normalize_answer", "exact_match", "token_f1", "SquadScores"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(character for character in text.lower() if character not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:  # SQuAD: two empty answers agree, one empty one does not
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class SquadScores(torchmetrics.Metric):
    """Mean exact match (``value="exact_match"``) or F1 (``value="f1"``), 0-1, over questions,
    each the best over its gold answers. Sums are synchronised across processes."""

    full_state_update = False

    def __init__(self, value: str) -> None:
        super().__init__()
        if value not in ("exact_match", "f1"):
            raise ValueError(f"SquadScores value must be 'exact_match' or 'f1', got {value!r}")
        self.score = exact_match if value == "exact_match" else token_f1
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> None:
        for prediction, answers in zip(predictions, golds):
            if answers:
                self.total += max(self.score(prediction, gold) for gold in answers)
                self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1.0)).float()
