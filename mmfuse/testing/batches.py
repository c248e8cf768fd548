"""Tiny batches for conformance runs: real ones from raw values through a model's own
preprocessors and tasks, and random encoder features for fusion heads and tasks."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from mmfuse.contracts import EncoderOutput

__all__ = ["make_batch", "random_features", "select_rows", "vector_values", "FEATURE_DIMS", "TOKEN_LENGTHS"]

#: encoder name -> output_dim of the random features given to fusion heads and tasks
FEATURE_DIMS = {"left": 6, "right": 5}
#: real tokens per row in the random features (the rest is padding)
TOKEN_LENGTHS = [4, 2, 3, 1]


def vector_values(dim: int, count: int, seed: int) -> list[list[float]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, dim, generator=generator).tolist()


def make_batch(
    model: Any, values: Mapping[str, Sequence[Any]], targets: Mapping[str, Sequence[Any]] | None = None
) -> dict[str, Any]:
    """The data pipeline's batch layout for ``model`` (a FusedModel) from raw values per encoder
    (``None`` = missing modality) and raw targets per task."""
    inputs: dict[str, dict[str, Tensor]] = {}
    present: dict[str, Tensor] = {}
    for name, encoder in model.encoders.items():
        if name not in values:
            continue
        preprocessor = encoder.preprocessor()
        rows = list(values[name])
        inputs[name] = preprocessor.collate([None if value is None else preprocessor(value) for value in rows])
        present[name] = torch.tensor([value is not None for value in rows], dtype=torch.bool)
    encoded: dict[str, Tensor] = {}
    for name, task in model.tasks.items():
        if task.needs_target and targets is not None and name in targets:
            encoded[name] = task.collate_targets([task.encode_target(value) for value in targets[name]])
    return {"inputs": inputs, "present": present, "targets": encoded}


def random_features(
    batch_size: int = len(TOKEN_LENGTHS), dims: Mapping[str, int] = FEATURE_DIMS, seed: int = 0
) -> dict[str, EncoderOutput]:
    """Random encoder outputs with padded token masks (row i has TOKEN_LENGTHS[i % 4] real tokens)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(TOKEN_LENGTHS)
    lengths = torch.tensor([TOKEN_LENGTHS[i % len(TOKEN_LENGTHS)] for i in range(batch_size)])
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    features = {}
    for name, dim in dims.items():
        tokens = torch.randn(batch_size, width, dim, generator=generator)
        pooled = torch.randn(batch_size, dim, generator=generator)
        features[name] = EncoderOutput(tokens=tokens, mask=mask.clone(), pooled=pooled)
    return features


def select_rows(features: Mapping[str, EncoderOutput], rows: Sequence[int]) -> dict[str, EncoderOutput]:
    """The same features restricted to ``rows``."""
    index = torch.tensor(list(rows))
    return {
        name: EncoderOutput(out.tokens[index], out.mask[index], out.pooled[index]) for name, out in features.items()
    }
