"""``mmfuse/token_classification``: one tag per word (BIO named entities, parts of speech). The
head scores every token of ``mmfuse/text_windows``; a word's tag is learned and predicted at its
first word piece (the other pieces are ignored, as in the usual BERT recipe)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse_plugins.tasks.entity_metrics import ENTITY_VALUES, EntityScores
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks.text_configs import TokenClassificationConfig, parse_tags
from mmfuse_plugins.tasks.token_inputs import FusedContext, choose_encoder, token_extras

__all__ = ["TokenClassificationTask", "build_token_classification", "IGNORE"]

#: target value of padding words and of tokens that carry no tag
IGNORE = -100


class TokenClassificationTask(Task):
    """Outputs ``{"logits" [B, W, L, C], "word_ids" [B, W, L], "num_words" [B]}``; targets are tag
    indices per word ``[B, words]`` (``-100`` padding)."""

    @property
    def reads_fused(self) -> bool:  # without add_fused the fusion head is frozen by the engine
        return self.context is not None

    def __init__(self, config: TokenClassificationConfig, fused_dim: int, encoder: str, token_dim: int) -> None:
        super().__init__()
        if config.labels is None:
            raise ValueError(
                "token_classification has no labels: give 'labels' in the recipe or train on data so they are learned"
            )
        self.config = config
        self.labels = list(config.labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.encoder = encoder
        self.context = FusedContext(fused_dim, token_dim) if config.add_fused else None
        self.head = build_task_head(token_dim, len(self.labels), config.hidden_dim, config.dropout)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        output = features[self.encoder]
        extras = token_extras("token_classification", self.encoder, output, ("word_ids", "num_words"))
        tokens = output.tokens if self.context is None else self.context(output.tokens, fused)
        word_ids = extras["word_ids"]
        logits = self.head(tokens).float().reshape(*word_ids.shape, len(self.labels))
        num_words = extras["num_words"].masked_fill(~(word_ids >= 0).flatten(1).any(1), 0)
        return {"logits": logits, "word_ids": word_ids, "num_words": num_words}

    def encode_target(self, value: Any) -> Tensor:
        try:
            tags = parse_tags(value)
        except ValueError as exc:
            raise SampleError(str(exc)) from exc
        unknown = sorted({tag for tag in tags if tag not in self.index})
        if unknown:
            raise SampleError(f"unknown tags {unknown}; known tags: {self.labels}")
        return torch.tensor([self.index[tag] for tag in tags], dtype=torch.long)

    def collate_targets(self, items: list[Tensor]) -> Tensor:
        words = max(1, max(item.shape[0] for item in items))
        tags = torch.full((len(items), words), IGNORE, dtype=torch.long)
        for index, item in enumerate(items):
            tags[index, : item.shape[0]] = item
        return tags

    def token_targets(self, outputs: dict[str, Tensor], targets: Tensor) -> Tensor:
        """The tag of each token ``[B, W, L]``: its word's tag at a word's first piece, else -100.
        Raises when a row's tag count differs from its word count."""
        targets = targets.to(outputs["word_ids"].device)
        tag_counts = (targets != IGNORE).sum(1)
        has_text = (outputs["word_ids"] >= 0).flatten(1).any(1)  # rows without text teach nothing
        wrong = ((tag_counts != outputs["num_words"]) & has_text).nonzero(as_tuple=True)[0]
        if wrong.numel():  # one host sync per step; a silent misalignment would be worse
            row = int(wrong[0])
            raise ValueError(
                f"token_classification: a row has {int(outputs['num_words'][row])} words but "
                f"{int(tag_counts[row])} tags; give one tag per word (words as the tokenizer splits them, "
                f"or give the text as a list of words)"
            )
        word_ids = outputs["word_ids"]
        batch = word_ids.shape[0]
        flat = word_ids.reshape(batch, -1)
        tags = targets.gather(1, flat.clamp(0, targets.shape[1] - 1))
        return tags.masked_fill(flat < 0, IGNORE).reshape(word_ids.shape)

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("token_classification loss needs targets")
        tags = self.token_targets(outputs, targets)
        logits = outputs["logits"]
        if not bool((tags != IGNORE).any()):
            return logits.sum() * 0.0  # no tagged word in this batch: nothing to learn, graph kept
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1), ignore_index=IGNORE)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        # every metric is updated by hand below, so no compute groups
        return torchmetrics.MetricCollection({value: EntityScores(value) for value in ENTITY_VALUES}, compute_groups=False)

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        predicted = self.predict(outputs)
        golds = [[self.labels[i] for i in row if i != IGNORE] for row in targets.cpu().tolist()]
        for metric in metrics.values():
            metric.update(predicted, golds)

    def predict(self, outputs: dict[str, Tensor]) -> list[list[str | None]]:
        """One tag per word; ``None`` for words in windows beyond ``max_windows``."""
        best = outputs["logits"].argmax(-1).cpu()
        word_ids, counts = outputs["word_ids"].cpu(), outputs["num_words"].cpu().tolist()
        results = []
        for row, count in enumerate(counts):
            tags: list[str | None] = [None] * count
            ids, choices = word_ids[row].flatten().tolist(), best[row].flatten().tolist()
            for word, choice in zip(ids, choices):
                if 0 <= word < count and tags[word] is None:  # first occurrence (earliest window)
                    tags[word] = self.labels[choice]
            results.append(tags)
        return results


def build_token_classification(
    config: TokenClassificationConfig, fused_dim: int, encoder_dims: dict[str, int]
) -> TokenClassificationTask:
    encoder = choose_encoder("token_classification", config.encoder, encoder_dims)
    return TokenClassificationTask(config, fused_dim, encoder, encoder_dims[encoder])
