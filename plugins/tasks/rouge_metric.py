"""ROUGE-L F-measure as one sum-reduced metric (torchmetrics' ``ROUGEScore`` reports three keys
and keeps every score in a list); the per-batch score itself is torchmetrics' ``rouge_score``."""

from __future__ import annotations

from typing import Sequence

import torch
import torchmetrics

__all__ = ["RougeL"]


class RougeL(torchmetrics.Metric):
    """Mean ROUGE-L F-measure over predicted / reference text pairs (0-1)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        from torchmetrics.functional.text.rouge import rouge_score

        for prediction, reference in zip(predictions, references):
            self.total += float(rouge_score(prediction, reference, rouge_keys="rougeL")["rougeL_fmeasure"])
            self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1.0)).float()
