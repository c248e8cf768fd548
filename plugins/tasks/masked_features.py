"""``mmfuse/masked_features``: masked-feature reconstruction on an image, audio or video encoder.

In ``prepare_batch`` (CPU, DataLoader workers) each present sample's input is cut into regions
(``feature_regions.py``), the targets of every region are computed from the unmasked input,
and ``mask_ratio`` of the regions are set to 0. The encoder then runs on the masked input; a small
decoder — one learned query per region attending over the encoder's tokens (with their relative
positions) and pooled vector — predicts every region's targets, and the loss is the squared error
over the hidden regions of present samples only. Targets are fixed functions of the input, so the
objective has no collapsed optimum: predicting a constant scores the targets' variance.

Masks are drawn per sample from a generator seeded by (``seed``, epoch, dataset index, task name):
the same whatever the process, worker or resume point, so a resumed run and a run on more
processes mask every sample exactly as one uninterrupted process does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torchmetrics
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Task
from mmfuse.data.augmentation import sample_generator
from mmfuse_plugins.tasks.feature_regions import FeatureRegions, regions_for
from mmfuse_plugins.tasks.gather import distributed_world
from mmfuse_plugins.tasks.self_supervised import MaskedFeaturesConfig

__all__ = ["MaskedFeaturesTask", "RegionDecoder", "RegionScore", "choose_hidden", "build_masked_features"]

#: sine / cosine pairs encoding a token's relative position for the decoder
_POSITION_FREQUENCIES = 8


def relative_positions(mask: Tensor) -> Tensor:
    """``[B, T]`` token mask -> each real token's position in ``(0, 1)`` among its row's real
    tokens (padding: 0), encoded as ``[B, T, 2 * _POSITION_FREQUENCIES]`` sines and cosines."""
    real = mask.to(torch.float32)
    rank = real.cumsum(1) - 0.5
    position = rank / real.sum(1, keepdim=True).clamp_min(1.0) * real
    scales = (2.0 ** torch.arange(_POSITION_FREQUENCIES, device=mask.device)) * math.pi
    angles = position.unsqueeze(-1) * scales
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RegionDecoder(nn.Module):
    """``EncoderOutput`` -> ``[B, regions, features]``: one learned query per region attends over
    the encoder's real tokens (plus its pooled vector, so no row attends over nothing)."""

    def __init__(self, token_dim: int, regions: int, features: int, width: int, heads: int) -> None:
        super().__init__()
        self.keys = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, width))
        self.positions = nn.Linear(2 * _POSITION_FREQUENCIES, width)
        self.pooled_marker = nn.Parameter(torch.zeros(width))
        self.queries = nn.Parameter(torch.randn(regions, width) * 0.02)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, features))

    def forward(self, features: EncoderOutput) -> Tensor:
        tokens, mask = features.tokens, features.mask.bool()
        keys = self.keys(tokens) + self.positions(relative_positions(mask).to(tokens.dtype))
        pooled = self.keys(features.pooled).unsqueeze(1) + self.pooled_marker
        keys = torch.cat([pooled, keys], dim=1)
        attend = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(keys.dtype)
        attended, _ = self.attention(queries, keys, keys, key_padding_mask=~attend, need_weights=False)
        return self.head(attended + queries)


def choose_hidden(valid: Tensor, ratio: float, generator: torch.Generator) -> Tensor:
    """``[regions]`` bool: ``ratio`` of the valid regions (rounded; at least one hidden and one
    left visible), chosen with ``generator``; nothing when fewer than two regions are valid."""
    candidates = valid.nonzero().squeeze(1)
    hidden = torch.zeros_like(valid)
    if candidates.numel() < 2:
        return hidden
    count = min(max(round(ratio * candidates.numel()), 1), candidates.numel() - 1)
    order = torch.randperm(candidates.numel(), generator=generator)
    hidden[candidates[order[:count]]] = True
    return hidden


def centre(values: Tensor, valid: Tensor) -> Tensor:
    """Each feature (column) minus its mean over the valid regions (rows); invalid entries 0.

    Not divided by the spread: a stationary input (a steady tone, a flat wall) has near-constant
    features whose spread would blow tiny differences up into unit-variance noise."""
    weights = valid.float()
    mean = (values * weights).sum(0) / weights.sum(0).clamp_min(1.0)
    return (values - mean) * weights


class RegionScore(torchmetrics.Metric):
    """Over the hidden regions of present samples: ``mse`` (mean squared error) or ``r2``
    (1 - squared error / the targets' variance: 0 for predicting their mean, 1 for perfect)."""

    full_state_update = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        for state in ("squared_error", "total", "total_squares", "count"):
            self.add_state(state, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, targets: Tensor) -> None:  # type: ignore[override]
        values, weights = targets[:, 0].double(), targets[:, 1].double()
        self.squared_error += ((predictions.double() - values) ** 2 * weights).sum()
        self.total += (values * weights).sum()
        self.total_squares += (values**2 * weights).sum()
        self.count += weights.sum()

    def compute(self) -> Tensor:
        count = self.count.clamp_min(1.0)
        if self.kind == "mse":
            return self.squared_error / count
        spread = self.total_squares - self.total**2 / count
        return 1.0 - self.squared_error / spread.clamp_min(1e-12)


class MaskedFeaturesTask(Task):
    """Outputs ``{"regions": [B, regions, features], "encoded": [B]}`` (every region's predicted
    targets; 1.0 for the rows the encoder saw — its presence mask at forward time, which modality
    dropout may have narrowed since ``prepare_batch``); targets ``[B, 2, regions, features]``
    made by ``prepare_batch``: ``[:, 0]`` the target values, ``[:, 1]`` the loss weights (1 on the
    valid cells of hidden regions of present samples)."""

    needs_target = False
    reads_fused = False

    def __init__(self, config: MaskedFeaturesConfig, encoder_dims: dict[str, int]) -> None:
        super().__init__()
        if config.encoder not in encoder_dims:
            raise ValueError(
                f"masked_features: encoder '{config.encoder}' is not in this recipe; encoders: {sorted(encoder_dims)}"
            )
        self.config = config
        self.token_dim = encoder_dims[config.encoder]
        #: the loss divides by the hidden count of all processes (one all_reduce of a scalar)
        self.uses_collectives = config.normalize_across_processes
        self.layout: FeatureRegions | None = None
        self.decoder: RegionDecoder | None = None

    def bind_encoders(self, encoders: dict[str, Encoder]) -> None:
        encoder = encoders[self.config.encoder]
        modality = getattr(encoder, "modality", "unknown")
        layout = regions_for(modality, self.config, encoder.preprocessor() if modality in ("image", "audio") else None)
        if layout is None:
            raise ValueError(
                f"masked_features: encoder '{self.config.encoder}' ({type(encoder).__name__}) reads {modality}; "
                "masked-feature reconstruction needs an image, audio or video encoder (use masked_lm for text_hf)"
            )
        self.layout = layout
        c = self.config
        self.decoder = RegionDecoder(self.token_dim, layout.regions, layout.features, c.decoder_dim, c.decoder_heads)

    def prepare_batch(self, name: str, batch: dict[str, Any]) -> None:
        inputs = batch["inputs"].get(self.config.encoder)
        if inputs is None:
            return
        layout = self._bound_layout()
        missing = [key for key in layout.input_keys if key not in inputs]
        if missing:
            raise ValueError(
                f"masked_features: encoder '{self.config.encoder}' gives inputs {sorted(inputs)}; the "
                f"{type(layout).__name__} layout needs {list(layout.input_keys)}"
            )
        rows = next(iter(inputs.values())).shape[0]
        present = batch["present"].get(self.config.encoder, torch.ones(rows, dtype=torch.bool))
        positions = batch.get("index")
        epoch = int(batch.get("epoch", 0))
        targets = torch.zeros(rows, 2, layout.regions, layout.features)
        for row in range(rows):
            if not bool(present[row]):
                continue
            values, valid = layout.targets(inputs, row)  # from the unmasked input
            if self.config.normalize_targets:
                values = centre(values, valid)
            index = int(positions[row]) if positions is not None and len(positions) == rows else row
            generator = sample_generator(self.config.seed, epoch, index, f"masked_features/{name}")
            hidden = choose_hidden(valid.any(1), self.config.mask_ratio, generator)
            layout.hide(inputs, row, hidden)
            targets[row, 0] = values * valid
            targets[row, 1] = (valid & hidden.unsqueeze(1)).float()
        batch["targets"][name] = targets

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.decoder is not None, "bind_encoders was not called (build the model with build_fused_model)"
        encoder = self.config.encoder
        regions = self.decoder(features[encoder])
        encoded = present.get(encoder, torch.ones(regions.shape[0], dtype=torch.bool, device=regions.device))
        return {"regions": regions, "encoded": encoded.to(regions.dtype)}

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("masked_features loss needs the targets made by prepare_batch; build batches with BatchCollator")
        predictions = outputs["regions"].float()
        targets = targets.to(predictions.device)
        values, weights = targets[:, 0], targets[:, 1] * _row_weights(outputs, predictions)
        squared = ((predictions - values) ** 2 * weights).sum()  # tied to every decoder weight, even when 0
        return squared / self._hidden_count(weights.sum())

    def empty_loss(self, device: torch.device) -> Tensor:
        self._hidden_count(torch.zeros((), device=device))  # join the other processes' all_reduce
        return torch.zeros((), device=device)

    def _hidden_count(self, local: Tensor) -> Tensor:
        """The divisor of the summed squared error: the local count, or — normalised across
        processes — the count of all processes over their number (DDP averages the gradients
        of the processes, so the result is the gradient of one process holding every batch)."""
        _, world = distributed_world()
        if not self.uses_collectives or world == 1:
            return local.detach().clamp_min(1.0)
        total = local.detach().float().clone()
        dist.all_reduce(total)
        return (total / world).clamp_min(1.0 / world)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection({"mse": RegionScore("mse"), "r2": RegionScore("r2")}, compute_groups=False)

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        if targets is None:
            return
        predictions = outputs["regions"].detach().float()
        targets = targets.to(predictions.device)
        weighted = torch.stack([targets[:, 0], targets[:, 1] * _row_weights(outputs, predictions)], dim=1)
        for metric in metrics.values():
            metric.update(predictions, weighted)

    def predict(self, outputs: dict[str, Tensor]) -> list[Any]:
        """Per sample, the predicted target features of every region (``[regions][features]``):
        what the decoder expects each region to hold; the task is meant for pre-training."""
        return outputs["regions"].detach().float().tolist()

    def _bound_layout(self) -> FeatureRegions:
        if self.layout is None:
            raise RuntimeError("masked_features: bind_encoders was not called (build the model with build_fused_model)")
        return self.layout


def _row_weights(outputs: dict[str, Tensor], predictions: Tensor) -> Tensor:
    """``[B, 1, 1]``: 1 for the rows the encoder saw, 0 for the others."""
    encoded = outputs.get("encoded")
    if encoded is None:
        return torch.ones(predictions.shape[0], 1, 1, device=predictions.device)
    return encoded.detach().float().view(-1, 1, 1)


def build_masked_features(config: MaskedFeaturesConfig, fused_dim: int, encoder_dims: dict[str, int]) -> MaskedFeaturesTask:
    return MaskedFeaturesTask(config, encoder_dims)
