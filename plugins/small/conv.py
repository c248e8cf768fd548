"""A masked 2D conv stack: conv blocks whose padded positions are re-zeroed after every block, so
an image's features are the same alone or zero-padded in a batch of larger images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse_plugins.small import ConvStackConfig

__all__ = ["MaskedConvStack", "masked_global_pool"]


class MaskedConvStack(nn.Module):
    """``[B, C_in, H, W]`` + real-pixel mask ``[B, H, W]`` -> ``[B, widths[-1], H', W']`` + mask."""

    def __init__(self, in_channels: int, config: ConvStackConfig) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.blocks = nn.ModuleList()
        width_in = in_channels
        for width in config.widths:
            units = nn.ModuleList()
            for index in range(config.convs_per_block):
                conv_in = width_in if index == 0 else width
                unit: list[nn.Module] = [
                    nn.Conv2d(conv_in, width, config.kernel_size, padding=config.kernel_size // 2, bias=config.norm == "none")
                ]
                if config.norm == "batch":
                    unit.append(nn.BatchNorm2d(width))
                unit.append(nn.ReLU(inplace=True))
                units.append(nn.Sequential(*unit))
            self.blocks.append(units)
            width_in = width
        self.output_dim = width_in
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, pixels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels
        keep = mask.unsqueeze(1).to(x.dtype)
        for block in self.blocks:
            for unit in block:
                x = unit(x) * keep.to(x.dtype)  # padding re-zeroed after every conv
            if self.pooling != "none":
                x, keep = self._pool(x, keep.to(x.dtype))
        return self.dropout(x), keep[:, 0] > 0

    def _pool(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        # ceil_mode: a window hanging over the image's edge sees only its real pixels, exactly as
        # it would see the zeroed padding of a larger image in the same batch (features are >= 0)
        pooled_keep = F.max_pool2d(keep, 2, ceil_mode=True)
        if self.pooling == "max":
            return F.max_pool2d(x, 2, ceil_mode=True), pooled_keep
        sums = F.avg_pool2d(x, 2, ceil_mode=True, divisor_override=1)
        counts = F.avg_pool2d(keep, 2, ceil_mode=True, divisor_override=1).clamp_min(1.0)
        return sums / counts * pooled_keep, pooled_keep


def masked_global_pool(tokens: Tensor, mask: Tensor, how: str) -> Tensor:
    """Mean or max of ``[B, T, D]`` over the True positions of ``mask`` ``[B, T]``."""
    if how == "max":
        return tokens.masked_fill(~mask.unsqueeze(-1), torch.finfo(tokens.dtype).min).amax(dim=1)
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
