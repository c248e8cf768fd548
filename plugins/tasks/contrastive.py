"""``mmfuse/contrastive``: CLIP-style alignment of two encoders' pooled embeddings.

Only pairs where the sample has BOTH modalities take part, as anchors and as negatives; under
torch.distributed the negatives of every process are used (see ``gather.py``)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, Task
from mmfuse.masking import present_pooled
from mmfuse_plugins.tasks import ContrastiveConfig
from mmfuse_plugins.tasks.gather import distributed_world, gather_with_local_grad

__all__ = ["ContrastiveTask", "RetrievalRecall", "symmetric_info_nce", "build_contrastive"]


def _pair_similarities(left: Tensor, right: Tensor, valid: Tensor) -> Tensor:
    """``left @ right.T`` with the columns of invalid pairs at the lowest finite value."""
    scores = left.float() @ right.float().T
    return scores.masked_fill(~valid.unsqueeze(0), torch.finfo(scores.dtype).min)


def symmetric_info_nce(left: Tensor, right: Tensor, valid: Tensor, logit_scale: Tensor) -> Tensor:
    """Mean of the left->right and right->left cross-entropies of ``logit_scale * cos`` over the
    valid pairs; row ``i`` of ``left`` matches row ``i`` of ``right``. Zero without valid pairs."""
    count = valid.sum().clamp_min(1).to(torch.float32)
    targets = torch.arange(left.shape[0], device=left.device)
    total = left.new_zeros((), dtype=torch.float32)
    for scores in (_pair_similarities(left, right, valid), _pair_similarities(right, left, valid)):
        logits = torch.where(valid.unsqueeze(0), logit_scale.float() * scores, scores)
        per_row = F.cross_entropy(logits, targets, reduction="none")
        total = total + torch.where(valid, per_row, torch.zeros_like(per_row)).sum() / count
    return total / 2


class RetrievalRecall(torchmetrics.Metric):
    """In-batch retrieval recall@k, both directions: the share of valid pairs whose partner ranks
    among the ``k`` most similar valid candidates of the same batch. Sums synchronise across
    processes; the value depends on the evaluation batch size (more candidates, harder)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, left: Tensor, right: Tensor, valid: Tensor) -> None:  # type: ignore[override]
        for scores in (_pair_similarities(left, right, valid), _pair_similarities(right, left, valid)):
            partner = scores.diagonal().unsqueeze(1)
            rank = (scores > partner).sum(dim=1)
            self.hits += ((rank < self.k) & valid).sum().to(self.hits.dtype)
        self.total += 2 * valid.sum().to(self.total.dtype)

    def compute(self) -> Tensor:
        return self.hits / self.total.clamp_min(1)


class ContrastiveTask(Task):
    """Outputs ``"left"`` / ``"right"`` (L2-normalised ``[B, E]``), their presence
    ``"left_present"`` / ``"right_present"``, ``"valid"`` (both present) and ``"logit_scale"``; the
    fused vector is not used."""

    needs_target = False
    reads_fused = False
    #: the loss gathers the other processes' embeddings (when ``gather_across_processes``)
    uses_collectives = True

    def __init__(self, config: ContrastiveConfig, encoder_dims: dict[str, int]) -> None:
        super().__init__()
        unknown = [name for name in config.encoders if name not in encoder_dims]
        if unknown:
            raise ValueError(
                f"contrastive: encoders {unknown} are not in this recipe; encoders: {sorted(encoder_dims)}"
            )
        self.config = config
        self.uses_collectives = config.gather_across_processes
        self.left, self.right = config.encoders
        self.encoder_dims = {name: encoder_dims[name] for name in config.encoders}
        self.projections = nn.ModuleDict(
            {name: nn.Linear(encoder_dims[name], config.embed_dim, bias=False) for name in config.encoders}
        )
        initial = torch.tensor(math.log(1.0 / config.temperature))
        if config.learn_temperature:
            self.log_logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("log_logit_scale", initial)

    def logit_scale(self) -> Tensor:
        """``1 / temperature``, clamped at ``max_logit_scale`` (CLIP's guard against collapse)."""
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def _embed(self, features: dict[str, EncoderOutput], present: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        pooled, keep = present_pooled(features, present, name, self.encoder_dims[name])
        return F.normalize(self.projections[name](pooled), dim=-1), keep

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        left, left_present = self._embed(features, present, self.left)
        right, right_present = self._embed(features, present, self.right)
        return {
            "left": left,
            "right": right,
            "left_present": left_present,
            "right_present": right_present,
            "valid": left_present & right_present,
            "logit_scale": self.logit_scale(),
        }

    def encode_target(self, value: Any) -> Tensor:
        raise TypeError("the contrastive task has no target column (needs_target = False)")

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None = None) -> Tensor:
        left, right, valid = outputs["left"], outputs["right"], outputs["valid"]
        if self.config.gather_across_processes and distributed_world()[1] > 1:
            left, right = gather_with_local_grad(left), gather_with_local_grad(right)
            valid = gather_with_local_grad(valid.to(torch.uint8)).bool()
        return symmetric_info_nce(left, right, valid, outputs["logit_scale"])

    def empty_loss(self, device: torch.device) -> Tensor:
        """The loss over the other processes' pairs, entering the same gathers with zero rows.
        The empty embeddings go through the projections, so under autocast they have the dtype
        the other ranks gather (a gather of mismatched dtypes fails or hangs)."""
        sides = {
            side: F.normalize(self.projections[name](torch.zeros((0, self.encoder_dims[name]), device=device)), dim=-1)
            for side, name in (("left", self.left), ("right", self.right))
        }
        valid = torch.zeros(0, dtype=torch.bool, device=device)
        return self.loss({**sides, "valid": valid, "logit_scale": self.logit_scale()})

    def build_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection({"recall@1": RetrievalRecall(1), "recall@5": RetrievalRecall(5)})

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        metrics.update(outputs["left"].detach(), outputs["right"].detach(), outputs["valid"])

    def predict(self, outputs: dict[str, Tensor]) -> list[Any]:
        """Per sample ``{left_encoder: embedding, right_encoder: embedding}``; None where absent."""
        sides = []
        for side, name in (("left", self.left), ("right", self.right)):
            vectors = outputs[side].detach().float().cpu().tolist()
            present = outputs[f"{side}_present"].cpu().tolist()
            sides.append([(name, vector if here else None) for vector, here in zip(vectors, present)])
        return [dict(pair) for pair in zip(*sides)]


def build_contrastive(config: ContrastiveConfig, fused_dim: int, encoder_dims: dict[str, int]) -> ContrastiveTask:
    return ContrastiveTask(config, encoder_dims)
