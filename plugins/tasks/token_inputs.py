"""What token-level tasks share: picking the encoder whose tokens they read (checked at build
time), reading its ``extras`` (checked at forward time), and adding the fused vector to every
token."""

from __future__ import annotations

from typing import Mapping

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
    """``output.extras[key]`` for each of ``keys``; a clear error when the encoder gives none."""
    missing = [key for key in keys if key not in output.extras]
    if missing:
        raise ValueError(
            f"{task} reads {missing} from encoder '{name}', which does not give them (it gives "
            f"{sorted(output.extras) or 'no extras'}); use type: mmfuse/text_windows for that encoder"
        )
    return {key: output.extras[key] for key in keys}


class FusedContext(nn.Module):
    """``tokens + W fused`` on every token: the fused multimodal vector as context of each token."""

    def __init__(self, fused_dim: int, token_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(fused_dim, token_dim)

    def forward(self, tokens: Tensor, fused: Tensor) -> Tensor:
        return tokens + self.projection(fused).to(tokens.dtype).unsqueeze(1)
