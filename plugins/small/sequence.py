"""Torch side of ``mmfuse/sequence``: strided 1D convolutions and an optional GRU over a waveform
or a numeric sequence; positions past a sequence's end are masked at every layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError
from mmfuse.preprocessing.waveform import WaveformPreprocessor
from mmfuse_plugins.small import SequenceConfig
from mmfuse_plugins.small.conv import masked_global_pool

__all__ = ["ArrayPreprocessor", "AugmentedWaveformPreprocessor", "SequenceEncoder", "build_sequence_encoder"]


class AugmentedWaveformPreprocessor(WaveformPreprocessor):
    """:class:`WaveformPreprocessor` with waveform augmentation (gain, shift, noise)."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__(config.sample_rate, config.max_seconds, normalize=config.normalize)
        self.augment_config = config.augment

    @property
    def augmentation_enabled(self) -> bool:
        from mmfuse.augment.audio import waveform_augment_active

        return waveform_augment_active(self.augment_config)

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if not self.augmentation_enabled:
            return tensors
        from mmfuse.augment.audio import augment_waveform

        return {**tensors, "waveform": augment_waveform(tensors["waveform"], self.augment_config, self.sample_rate, generator)}


class ArrayPreprocessor(Preprocessor):
    """A list ``[T]`` / ``[T, C]`` or a ``.npy`` file -> ``{"values": Float[T, C]}``; collate pads
    to the longest with zeros and returns ``attention_mask`` (Long[B, T])."""

    modality = "sequence"
    reads_files = True

    def __init__(self, in_channels: int, max_length: int) -> None:
        self.in_channels = in_channels
        self.max_length = max_length

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if isinstance(value, (str, Path)):
            try:
                array = np.load(str(value), allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise SampleError(f"cannot read sequence file {value}: expected a .npy array ({exc})") from exc
        else:
            array = np.asarray(value, dtype=np.float32)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != self.in_channels or array.shape[0] == 0:
            raise SampleError(f"expected a non-empty sequence of shape [T] or [T, {self.in_channels}], got {array.shape}")
        if not np.isfinite(array).all():
            raise SampleError("sequence contains NaN or infinite values")
        return {"values": torch.from_numpy(np.ascontiguousarray(array[: self.max_length], dtype=np.float32))}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        length = max([item["values"].shape[0] for item in items if item is not None] or [1])
        values = torch.zeros(len(items), length, self.in_channels)
        mask = torch.ones(len(items), length, dtype=torch.long)  # a missing row: all "real" zeros
        for index, item in enumerate(items):
            if item is None:
                continue
            count = item["values"].shape[0]
            values[index, :count] = item["values"]
            mask[index, count:] = 0
        return {"values": values, "attention_mask": mask}

    def settings(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "max_length": self.max_length}


class SequenceEncoder(Encoder):
    """Tokens are the (GRU) features of the conv steps ``[B, T', D]``; pooled is their masked
    mean (or max). ``D`` is ``widths[-1]``, or the GRU width (x2 when bidirectional)."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = "audio" if config.input == "audio" else "sequence"
        self.in_channels = 1 if config.input == "audio" else config.in_channels
        self.convs = nn.ModuleList()
        width_in = self.in_channels
        for width in config.widths:
            self.convs.append(nn.Conv1d(width_in, width, config.kernel_size, stride=config.stride, padding=config.kernel_size // 2))
            width_in = width
        self.gru = None
        if config.recurrent == "gru":
            self.gru = nn.GRU(
                width_in, config.hidden_size, num_layers=config.recurrent_layers,
                batch_first=True, bidirectional=config.bidirectional,
            )
            width_in = config.hidden_size * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.output_dim = width_in

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        if self.config.input == "audio":
            x = inputs["waveform"].unsqueeze(1)
        else:
            x = inputs["values"].transpose(1, 2)
        lengths = inputs["attention_mask"].sum(dim=1)
        k, s, p = self.config.kernel_size, self.config.stride, self.config.kernel_size // 2
        for conv in self.convs:
            x = torch.relu(conv(x))
            lengths = ((lengths + 2 * p - k).div(s, rounding_mode="floor") + 1).clamp_min(1)
            # zero the steps past each sequence's end: the next layer sees what it would see alone
            steps = torch.arange(x.shape[-1], device=x.device)
            x = x * (steps.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).to(x.dtype)
        tokens = x.transpose(1, 2)
        lengths = lengths.clamp(max=tokens.shape[1])
        mask = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
        if self.gru is not None:
            tokens = self._recurrent(tokens, lengths)
        tokens = self.dropout(tokens)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_global_pool(tokens, mask, self.config.pooling))

    def _recurrent(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        # the GRU runs in float32 (no autocast kernel on every device); packing keeps the
        # backward direction from reading padding
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            packed = pack_padded_sequence(tokens.float(), lengths.cpu(), batch_first=True, enforce_sorted=False)
            output, _ = self.gru(packed)
            unpacked, _ = pad_packed_sequence(output, batch_first=True, total_length=tokens.shape[1])
        return unpacked

    def preprocessor(self) -> Preprocessor:
        if self.config.input == "audio":
            return AugmentedWaveformPreprocessor(self.config)
        return ArrayPreprocessor(self.config.in_channels, self.config.max_length)

    def layer_groups(self) -> list[nn.Module]:
        return [*self.convs, *([self.gru] if self.gru is not None else [])]


def build_sequence_encoder(config: SequenceConfig) -> SequenceEncoder:
    return SequenceEncoder(config)
