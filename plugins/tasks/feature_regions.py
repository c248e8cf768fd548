"""The regions that ``mmfuse/masked_features`` hides and the low-level targets it predicts for
them, one class per input layout of the built-in encoder families:

* :class:`ImageRegions` — ``pixels [B, C, H, W]`` (+ ``pixel_mask [B, H, W]``, real pixels top-left):
  a rows x columns grid over each image's real extent; target: mean colour of ``cells x cells``
  sub-cells per region (``C * cells**2`` values);
* :class:`AudioRegions` — ``waveform [B, L]`` + ``attention_mask [B, L]`` (real samples first):
  equal time spans of each clip's real length; target: log-mel band energies of the span
  (mean power of the STFT frames centred in it, through a mel filterbank);
* :class:`VideoRegions` — ``frames [B, N, 3, H, W]`` + ``frame_mask [B, N]`` (real frames first):
  tubes of temporal segments (of the real frames) x rows x columns; target: mean colour of
  ``cells x cells`` sub-cells over the segment's frames.

Regions follow each sample's own real extent, never the padded batch canvas, so a sample's
regions and targets do not depend on what it is batched with, and padding is never a region.
Every method works on one row; all of it runs on the CPU in the DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["FeatureRegions", "ImageRegions", "AudioRegions", "VideoRegions", "regions_for", "part_index"]


def part_index(length: int, parts: int) -> Tensor:
    """Which of ``parts`` equal parts each of ``length`` positions falls in (``[length]``, long).

    Sub-parts nest: with ``parts = regions * cells``, ``part_index(n, regions * cells) // cells``
    equals ``part_index(n, regions)``, so target cells never straddle two regions."""
    return torch.arange(length) * parts // max(length, 1)


def _one_hot(length: int, parts: int) -> Tensor:
    """``[parts, length]`` float: 1 where a position falls in a part."""
    return torch.nn.functional.one_hot(part_index(length, parts), parts).T.float()


class FeatureRegions:
    """One input layout: how many regions and target features, how to compute the targets of one
    row from its unmasked input, and how to blank some of its regions."""

    #: the encoder input tensors this layout reads (checked before the first batch)
    input_keys: tuple[str, ...] = ()
    regions: int
    features: int

    def targets(self, inputs: dict[str, Tensor], row: int) -> tuple[Tensor, Tensor]:
        """(values ``[regions, features]``, valid ``[regions, features]`` bool) of one row, from its
        unmasked input; a feature is invalid where its cell holds no real input."""
        raise NotImplementedError

    def hide(self, inputs: dict[str, Tensor], row: int, hidden: Tensor) -> None:
        """Set the real input of the regions where ``hidden`` (``[regions]`` bool) is True to 0, in place."""
        raise NotImplementedError


def _cell_means_to_regions(sums: Tensor, counts: Tensor, region_axes: tuple[int, ...], cells: int) -> tuple[Tensor, Tensor]:
    """Per-cell sums ``[C, *spatial cells]`` and counts -> (means, valid) ``[regions, C * cells**2]``.

    ``region_axes``: the number of regions along each axis of the cells grid; the last two axes
    hold ``cells`` sub-cells per region (image rows / columns), any leading axis one (segments)."""
    channels = sums.shape[0]
    means = sums / counts.clamp_min(1.0)
    valid = (counts > 0).expand_as(means)
    shape: list[int] = [channels]
    for index, count in enumerate(region_axes):
        shape += [count, cells] if index >= len(region_axes) - 2 else [count, 1]
    means, valid = means.reshape(shape), valid.reshape(shape)
    # [C, r0, s0, r1, s1, ...] -> [r0, r1, ..., C, s0, s1, ...]
    regions = list(range(1, len(shape), 2))
    subcells = list(range(2, len(shape), 2))
    order = regions + [0] + subcells
    total = math.prod(region_axes)
    return means.permute(order).reshape(total, -1), valid.permute(order).reshape(total, -1)


class ImageRegions(FeatureRegions):
    input_keys = ("pixels",)

    def __init__(self, grid: list[int], cells: int, channels: int) -> None:
        self.rows, self.columns = grid
        self.cells = cells
        self.channels = channels
        self.regions = self.rows * self.columns
        self.features = channels * cells * cells

    def _extent(self, inputs: dict[str, Tensor], row: int) -> tuple[int, int]:
        pixels = inputs["pixels"]
        mask = inputs.get("pixel_mask")
        if mask is None:
            return int(pixels.shape[-2]), int(pixels.shape[-1])
        real = mask[row].bool()
        return int(real.any(1).sum()), int(real.any(0).sum())

    def targets(self, inputs: dict[str, Tensor], row: int) -> tuple[Tensor, Tensor]:
        height, width = self._extent(inputs, row)
        image = inputs["pixels"][row, :, :height, :width].float()
        down = _one_hot(height, self.rows * self.cells)
        across = _one_hot(width, self.columns * self.cells)
        sums = torch.einsum("yh,chw,xw->cyx", down, image, across)
        counts = torch.outer(down.sum(1), across.sum(1)).unsqueeze(0)
        return _cell_means_to_regions(sums, counts, (self.rows, self.columns), self.cells)

    def hide(self, inputs: dict[str, Tensor], row: int, hidden: Tensor) -> None:
        height, width = self._extent(inputs, row)
        region = part_index(height, self.rows).unsqueeze(1) * self.columns + part_index(width, self.columns)
        inputs["pixels"][row, :, :height, :width].masked_fill_(hidden[region], 0.0)


class VideoRegions(FeatureRegions):
    input_keys = ("frames", "frame_mask")

    def __init__(self, grid: list[int], cells: int, channels: int = 3) -> None:
        self.segments, self.rows, self.columns = grid
        self.cells = cells
        self.regions = self.segments * self.rows * self.columns
        self.features = channels * cells * cells

    @staticmethod
    def _real_frames(inputs: dict[str, Tensor], row: int) -> int:
        return int(inputs["frame_mask"][row].bool().sum())

    def targets(self, inputs: dict[str, Tensor], row: int) -> tuple[Tensor, Tensor]:
        count = self._real_frames(inputs, row)
        clip = inputs["frames"][row, :count].float()  # [n, C, H, W]
        height, width = clip.shape[-2:]
        along = _one_hot(count, self.segments)
        down = _one_hot(height, self.rows * self.cells)
        across = _one_hot(width, self.columns * self.cells)
        sums = torch.einsum("tn,yh,nchw,xw->ctyx", along, down, clip, across)
        counts = torch.einsum("t,y,x->tyx", along.sum(1), down.sum(1), across.sum(1)).unsqueeze(0)
        return _cell_means_to_regions(sums, counts, (self.segments, self.rows, self.columns), self.cells)

    def hide(self, inputs: dict[str, Tensor], row: int, hidden: Tensor) -> None:
        count = self._real_frames(inputs, row)
        clip = inputs["frames"][row, :count]
        height, width = clip.shape[-2:]
        region = (
            part_index(count, self.segments).view(-1, 1, 1) * (self.rows * self.columns)
            + part_index(height, self.rows).view(1, -1, 1) * self.columns
            + part_index(width, self.columns).view(1, 1, -1)
        )  # [n, H, W]
        blank = hidden[region].unsqueeze(1)
        clip.masked_fill_(blank, 0.0)
        if 0 < count < inputs["frames"].shape[1]:
            # padding frames may be copies of the last real frame (video_native): blank them as it,
            # or they would show what was hidden (zero padding stays zero)
            inputs["frames"][row, count:].masked_fill_(blank[-1:], 0.0)


class AudioRegions(FeatureRegions):
    input_keys = ("waveform", "attention_mask")

    def __init__(self, spans: int, bands: int, sample_rate: int) -> None:
        self.regions = spans
        self.features = bands
        self.sample_rate = sample_rate
        # a ~32 ms analysis window (256 samples at 8 kHz, 512 at 16 kHz), half-overlapping
        self.n_fft = 2 ** max(4, round(math.log2(sample_rate * 0.032)))
        self.hop = self.n_fft // 2
        self._filterbank: Tensor | None = None

    def filterbank(self) -> Tensor:
        """``[n_fft // 2 + 1, bands]`` mel filters (torchaudio's, HTK scale, made once)."""
        if self._filterbank is None:
            import torchaudio

            self._filterbank = torchaudio.functional.melscale_fbanks(
                self.n_fft // 2 + 1, 0.0, self.sample_rate / 2, self.features, self.sample_rate
            )
        return self._filterbank

    @staticmethod
    def _real_samples(inputs: dict[str, Tensor], row: int) -> int:
        return int(inputs["attention_mask"][row].bool().sum())

    def targets(self, inputs: dict[str, Tensor], row: int) -> tuple[Tensor, Tensor]:
        count = self._real_samples(inputs, row)
        wave = inputs["waveform"][row, :count].float()
        window = torch.hann_window(self.n_fft)
        spectrum = torch.stft(wave, self.n_fft, self.hop, window=window, center=True, pad_mode="constant", return_complex=True)
        power = spectrum.abs().pow(2).T @ self.filterbank()  # [frames, bands]
        centres = torch.arange(power.shape[0]) * self.hop
        inside = centres < count
        span = (centres * self.regions // max(count, 1)).clamp_max(self.regions - 1)
        assign = torch.nn.functional.one_hot(span, self.regions).T.float() * inside.float()  # [spans, frames]
        frames = assign.sum(1, keepdim=True)
        energy = torch.log((assign @ power) / frames.clamp_min(1.0) + 1e-8)
        return energy, (frames > 0).expand_as(energy)

    def hide(self, inputs: dict[str, Tensor], row: int, hidden: Tensor) -> None:
        count = self._real_samples(inputs, row)
        inputs["waveform"][row, :count].masked_fill_(hidden[part_index(count, self.regions)], 0.0)


def regions_for(modality: str, settings: Any, preprocessor: Any) -> FeatureRegions | None:
    """The layout of an encoder of ``modality`` (``settings``: the task's config; ``preprocessor``:
    the encoder's, for the image channels and the audio sample rate); None for another modality."""
    if modality == "image":
        return ImageRegions(settings.image_grid, settings.target_cells, int(getattr(preprocessor, "channels", 3)))
    if modality == "video":
        return VideoRegions(settings.video_grid, settings.target_cells)
    if modality == "audio":
        rate = getattr(preprocessor, "sample_rate", None)
        if not rate:
            raise ValueError("masked_features: the audio encoder's preprocessor has no sample_rate")
        return AudioRegions(settings.audio_spans, settings.audio_bands, int(rate))
    return None
