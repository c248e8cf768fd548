"""What token-level tasks share: picking the encoder whose tokens they read (checked at build
time), reading its ``extras`` (checked at forward time), and adding the fused vector to every
token."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput

__all__ = ["choose_encoder", "token_extras", "FusedContext"]


def choose_encoder(task: str, configured: str | None, encoder_dims: Mapping[str, int]) -> str:
    """The configured encoder, or the only one; an error naming the choices otherwise."""
    if configured is not None:
        if configured not in encoder_dims:
            raise ValueError(f"{task}: 'encoder: {configured}' is not one of the recipe's encoders {sorted(encoder_dims)}")
        return configured
    if len(encoder_dims) != 1:
        raise ValueError(f"{task}: the recipe has several encoders {sorted(encoder_dims)}; say which one holds the text with 'encoder:'")
    return next(iter(encoder_dims))


def token_extras(task: str, name: str, output: EncoderOutput, keys: tuple[str, ...]) -> dict[str, Tensor]:
    """``output.extras[key]`` for each of ``keys``, with positions whose token is masked (a row
    without this text: missing or dropped modality) set to -1, i.e. outside any text.

    A batch in which no row has the text skips the encoder (one masked token per row, no extras):
    then every row gets one blank position. Any other encoder without the keys is an error."""
    if not all(key in output.extras for key in keys):
        if not bool(output.mask.any()):
            return _blank_extras(output.mask.shape[0], output.mask.device, keys)
        missing = [key for key in keys if key not in output.extras]
        raise ValueError(
            f"{task} reads {missing} from encoder '{name}', which does not give them (it gives "
            f"{sorted(output.extras) or 'no extras'}); use type: mmfuse/text_windows for that encoder"
        )
    extras = {key: output.extras[key] for key in keys}
    for key in ("offsets", "word_ids"):
        if key in extras:
            value = extras[key]
            token_mask = output.mask.reshape(value.shape[:3]).to(value.device)
            if value.ndim == 4:
                token_mask = token_mask.unsqueeze(-1)
            extras[key] = value.masked_fill(~token_mask, -1)
    return extras


def _blank_extras(batch: int, device: torch.device, keys: tuple[str, ...]) -> dict[str, Tensor]:
    blank = {
        "offsets": torch.full((batch, 1, 1, 2), -1, dtype=torch.long, device=device),
        "word_ids": torch.full((batch, 1, 1), -1, dtype=torch.long, device=device),
        "text_codes": torch.full((batch, 1), -1, dtype=torch.long, device=device),
        "num_words": torch.zeros(batch, dtype=torch.long, device=device),
    }
    return {key: blank[key] for key in keys}


class FusedContext(nn.Module):
    """``tokens + W fused`` on every token: the fused multimodal vector as context of each token."""

    def __init__(self, fused_dim: int, token_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(fused_dim, token_dim)

    def forward(self, tokens: Tensor, fused: Tensor) -> Tensor:
        return tokens + self.projection(fused).to(tokens.dtype).unsqueeze(1)
