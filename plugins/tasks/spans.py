"""Answer spans between characters and tokens of windowed texts (``offsets [B, W, L, 2]``, ``-1``
outside the text): which token starts / ends a gold answer in each window that holds it whole,
the best-scoring predicted span, and cutting a span out of a text's code points."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["answer_token_targets", "best_span", "text_from_codes"]


def answer_token_targets(offsets: Tensor, spans: Tensor) -> tuple[Tensor, Tensor]:
    """Start / end token of the character span ``spans[b] = (start, end)`` (end exclusive) in every
    window of sample ``b`` whose text tokens cover the whole span.

    Returns two bool tensors ``[B, W, L]``: at most one True per window (the first and the last
    token overlapping the answer). A window cutting the answer, a span outside the kept windows,
    or a padding span (start < 0) gives no True in that window."""
    token_start, token_end = offsets[..., 0], offsets[..., 1]
    in_text = token_start >= 0
    start = spans[:, 0].view(-1, 1, 1)
    end = spans[:, 1].view(-1, 1, 1)
    overlap = in_text & (token_end > start) & (token_start < end) & (start >= 0)
    first_char = torch.where(in_text, token_start, torch.full_like(token_start, torch.iinfo(token_start.dtype).max))
    last_char = torch.where(in_text, token_end, torch.full_like(token_end, -1))
    covers = (first_char.amin(-1) <= start[..., 0]) & (last_char.amax(-1) >= end[..., 0])
    holds = covers & overlap.any(-1)
    length = offsets.shape[2]
    first = overlap.int().argmax(-1)
    last = length - 1 - overlap.flip(-1).int().argmax(-1)
    positions = torch.arange(length, device=offsets.device)
    start_hits = (positions == first.unsqueeze(-1)) & holds.unsqueeze(-1)
    end_hits = (positions == last.unsqueeze(-1)) & holds.unsqueeze(-1)
    return start_hits, end_hits


def best_span(
    start_logits: Tensor, end_logits: Tensor, offsets: Tensor, max_answer_tokens: int
) -> tuple[int, int, float] | None:
    """The character span ``(start, end, score)`` of one sample's best answer: the highest
    ``start_logit + end_logit`` over token pairs inside one window's text, start <= end, at most
    ``max_answer_tokens`` tokens long. ``None`` when no window holds text. Inputs ``[W, L]``
    (offsets ``[W, L, 2]``)."""
    in_text = offsets[..., 0] >= 0
    length = in_text.shape[-1]
    band = torch.ones(length, length, dtype=torch.bool, device=offsets.device).triu()
    band &= ~torch.ones_like(band).triu(max_answer_tokens)
    valid = band & in_text.unsqueeze(-1) & in_text.unsqueeze(-2)
    if not bool(valid.any()):
        return None
    scores = start_logits.float().unsqueeze(-1) + end_logits.float().unsqueeze(-2)
    scores = scores.masked_fill(~valid, float("-inf"))
    best = int(scores.flatten().argmax())
    window, rest = divmod(best, length * length)
    first, last = divmod(rest, length)
    return int(offsets[window, first, 0]), int(offsets[window, last, 1]), float(scores.flatten()[best])


def text_from_codes(codes: Tensor, start: int, end: int) -> str:
    """``text[start:end]`` of a text stored as code points (``-1`` padding)."""
    return "".join(chr(code) for code in codes[start:end].tolist() if code >= 0)
