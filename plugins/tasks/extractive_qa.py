"""``mmfuse/extractive_qa``: start / end logits over the context tokens of every window (from
``mmfuse/text_windows``), one softmax across all windows of a question (shared normalisation,
Clark & Gardner 2018), answers mapped back to characters of the context."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse_plugins.tasks.spans import answer_token_targets, best_span, text_from_codes
from mmfuse_plugins.tasks.squad_metrics import SquadScores
from mmfuse_plugins.tasks.text_configs import ExtractiveQAConfig, parse_answers
from mmfuse_plugins.tasks.token_inputs import FusedContext, choose_encoder, token_extras

__all__ = ["ExtractiveQATask", "build_extractive_qa"]

#: logit of tokens that cannot be part of an answer (question, special and padding tokens);
#: finite, so a softmax over a text-less sample stays defined
_OUTSIDE = -1.0e4


class ExtractiveQATask(Task):
    """Outputs ``{"start_logits", "end_logits"}`` ``[B, W, L]`` plus the encoder's ``offsets`` and
    ``text_codes``; targets are gold character spans ``[B, K, 2]`` (``-1`` padding)."""

    @property
    def reads_fused(self) -> bool:  # without add_fused the fusion head is frozen by the engine
        return self.context is not None

    def __init__(self, config: ExtractiveQAConfig, fused_dim: int, encoder: str, token_dim: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.context = FusedContext(fused_dim, token_dim) if config.add_fused else None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(token_dim, 2)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        output = features[self.encoder]
        extras = token_extras("extractive_qa", self.encoder, output, ("offsets", "text_codes"))
        tokens = output.tokens if self.context is None else self.context(output.tokens, fused)
        logits = self.head(self.dropout(tokens)).float()
        offsets = extras["offsets"]
        batch, windows, length = offsets.shape[:3]
        logits = logits.reshape(batch, windows, length, 2)
        logits = logits.masked_fill((offsets[..., 0] < 0).unsqueeze(-1), _OUTSIDE)
        return {
            "start_logits": logits[..., 0],
            "end_logits": logits[..., 1],
            "offsets": offsets,
            "text_codes": extras["text_codes"],
        }

    def encode_target(self, value: Any) -> Tensor:
        try:
            return torch.tensor(parse_answers(value), dtype=torch.long)
        except ValueError as exc:
            raise SampleError(str(exc)) from exc

    def collate_targets(self, items: list[Tensor]) -> Tensor:
        answers = max(item.shape[0] for item in items)
        spans = torch.full((len(items), answers, 2), -1, dtype=torch.long)
        for index, item in enumerate(items):
            spans[index, : item.shape[0]] = item
        return spans

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        """Negative log of the probability of the first gold answer's start (and end) token,
        summed over the windows that hold it, under one softmax over all windows."""
        if targets is None:
            raise ValueError("extractive_qa loss needs targets")
        start_hits, end_hits = answer_token_targets(outputs["offsets"], targets[:, 0].to(outputs["offsets"].device))
        answerable = start_hits.flatten(1).any(1)
        total = outputs["start_logits"].new_zeros(())
        for logits, hits in ((outputs["start_logits"], start_hits), (outputs["end_logits"], end_hits)):
            flat, flat_hits = logits.flatten(1), hits.flatten(1)
            gold = flat.masked_fill(~flat_hits, _OUTSIDE * 10).logsumexp(1)
            total = total + torch.where(answerable, flat.logsumexp(1) - gold, torch.zeros_like(gold)).sum()
        # a question whose answer fell outside the kept windows teaches nothing (HF does the same
        # with its no-answer token); the sum keeps the graph connected even when none is answerable
        return total / (2 * answerable.sum().clamp_min(1))

    def build_metrics(self) -> torchmetrics.MetricCollection:
        # every metric is updated by hand below, so no compute groups
        return torchmetrics.MetricCollection(
            {"exact_match": SquadScores("exact_match"), "f1": SquadScores("f1")}, compute_groups=False
        )

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        predicted = [answer["text"] for answer in self.predict(outputs)]
        golds = [
            [text_from_codes(codes, int(start), int(end)) for start, end in spans.tolist() if start >= 0]
            for codes, spans in zip(outputs["text_codes"].cpu(), targets.cpu())
        ]
        for metric in metrics.values():
            metric.update(predicted, golds)

    def predict(self, outputs: dict[str, Tensor]) -> list[dict[str, Any]]:
        """``{"text", "start", "end", "score"}`` per question: the answer and its character span."""
        answers = []
        rows = zip(outputs["start_logits"].cpu(), outputs["end_logits"].cpu(), outputs["offsets"].cpu(), outputs["text_codes"].cpu())
        for start_logits, end_logits, offsets, codes in rows:
            span = best_span(start_logits, end_logits, offsets, self.config.max_answer_tokens)
            if span is None:
                answers.append({"text": "", "start": 0, "end": 0, "score": None})
                continue
            start, end, score = span
            answers.append({"text": text_from_codes(codes, start, end), "start": start, "end": end, "score": score})
        return answers


def build_extractive_qa(config: ExtractiveQAConfig, fused_dim: int, encoder_dims: dict[str, int]) -> ExtractiveQATask:
    encoder = choose_encoder("extractive_qa", config.encoder, encoder_dims)
    return ExtractiveQATask(config, fused_dim, encoder, encoder_dims[encoder])
