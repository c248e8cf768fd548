"""``mmfuse/masked_lm``: masked language modelling on a ``text_hf`` encoder.

The head is the transformers library's own: ``AutoModelForMaskedLM`` for the encoder's
architecture (its pretrained head weights when the encoder is pretrained), with its backbone
replaced by a stand-in that hands over the token features the encoder already computed, so the
library's own head code runs on them and the encoder runs once per step. Its output embedding is
tied to the encoder's word embeddings when the architecture ties them. Masking is the library's
``DataCollatorForLanguageModeling.torch_mask_tokens`` (80 % [MASK], 10 % random, 10 % kept),
applied in ``prepare_batch``; special tokens, padding and rows without text are never chosen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Task
from mmfuse_plugins.tasks.self_supervised import MaskedLMConfig

__all__ = ["MaskedLMTask", "build_masked_lm", "IGNORE"]

#: label of a position that is not predicted (cross-entropy's default ignore_index)
IGNORE = -100


class _ComputedHiddenStates(nn.Module):
    """Stands in for the masked-LM model's backbone: returns the token features set just before
    the call, whatever the model passes it."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        if self.pending is None:
            raise RuntimeError("masked_lm: the head ran without token features")
        return BaseModelOutput(last_hidden_state=self.pending)


class MaskedLMTask(Task):
    """Outputs ``{"logits": [B, T, V]}``; targets ``[B, T]`` (token ids at the chosen positions,
    -100 elsewhere) are made by ``prepare_batch``."""

    needs_target = False
    uses_collectives = False

    def __init__(self, config: MaskedLMConfig, encoder_dims: dict[str, int]) -> None:
        super().__init__()
        if config.encoder not in encoder_dims:
            raise ValueError(f"masked_lm: encoder '{config.encoder}' is not in this recipe; encoders: {sorted(encoder_dims)}")
        self.config = config
        self.mlm: nn.Module | None = None
        self.tokenizer: Any = None
        self._collator: Any = None

    def bind_encoders(self, encoders: dict[str, Encoder]) -> None:
        from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel

        encoder = encoders[self.config.encoder]
        backbone, tokenizer = getattr(encoder, "model", None), getattr(encoder, "tokenizer", None)
        if not isinstance(backbone, PreTrainedModel) or tokenizer is None:
            raise ValueError(
                f"masked_lm: encoder '{self.config.encoder}' is a {type(encoder).__name__}; masked language "
                "modelling needs a transformers text encoder with a tokenizer (type: text_hf)"
            )
        if tokenizer.mask_token is None:
            raise ValueError(f"masked_lm: the tokenizer of '{self.config.encoder}' has no mask token")
        settings = getattr(encoder, "config", None)
        source = getattr(settings, "model", None)
        try:
            if source and getattr(settings, "pretrained", False):
                mlm = AutoModelForMaskedLM.from_pretrained(source)
            else:
                mlm = AutoModelForMaskedLM.from_config(backbone.config)
        except ValueError as exc:
            raise ValueError(
                f"masked_lm: transformers has no masked-LM head for {type(backbone).__name__} "
                f"(encoder '{self.config.encoder}'): {exc}"
            ) from exc
        # the encoder computes the token features; the head's own backbone copy is dropped
        setattr(mlm, mlm.base_model_prefix, _ComputedHiddenStates())
        output = mlm.get_output_embeddings()
        if output is not None and getattr(mlm.config, "tie_word_embeddings", True):
            output.weight = backbone.get_input_embeddings().weight
        self.mlm = mlm
        self.tokenizer = tokenizer
        self._collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=self.config.mlm_probability,
            mask_replace_prob=self.config.mask_replace_prob,
            random_replace_prob=self.config.random_replace_prob,
            whole_word_mask=self.config.whole_word_mask,
        )

    @property
    def vocab_size(self) -> int:
        return int(self.mlm.config.vocab_size)  # type: ignore[union-attr]

    def prepare_batch(self, name: str, batch: dict[str, Any]) -> None:
        inputs = batch["inputs"].get(self.config.encoder)
        if inputs is None:
            return
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        special = torch.tensor(
            [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
            dtype=torch.bool,
        )
        present = batch["present"].get(self.config.encoder, torch.ones(ids.shape[0], dtype=torch.bool))
        never = special | ~attention.bool() | ~present.unsqueeze(1)
        masked, labels = self._collator.torch_mask_tokens(ids.clone(), special_tokens_mask=never)
        inputs["input_ids"] = masked
        batch["targets"][name] = labels

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.mlm is not None, "bind_encoders was not called (build the model with build_fused_model)"
        stand_in = getattr(self.mlm, self.mlm.base_model_prefix)
        stand_in.pending = features[self.config.encoder].tokens
        try:
            logits = self.mlm().logits
        finally:
            stand_in.pending = None
        return {"logits": logits}

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("masked_lm loss needs the labels made by prepare_batch; build batches with BatchCollator")
        logits = outputs["logits"].float()
        labels = targets.to(logits.device)
        if not bool((labels != IGNORE).any()):  # nothing chosen in this batch: no signal, no NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "accuracy": torchmetrics.classification.MulticlassAccuracy(self.vocab_size, average="micro", ignore_index=IGNORE),
                "perplexity": torchmetrics.text.Perplexity(ignore_index=IGNORE),
            },
            compute_groups=False,
        )

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        logits = outputs["logits"].detach().float()
        metrics["accuracy"].update(logits.view(-1, logits.shape[-1]), targets.view(-1))  # type: ignore[union-attr]
        metrics["perplexity"].update(logits, targets)

    def predict(self, outputs: dict[str, Tensor]) -> list[Any]:
        """Per sample, the most likely token at every position (fill-mask: read the [MASK] slots)."""
        best = outputs["logits"].argmax(-1).tolist()
        return [self.tokenizer.convert_ids_to_tokens(row) for row in best]


def build_masked_lm(config: MaskedLMConfig, fused_dim: int, encoder_dims: dict[str, int]) -> MaskedLMTask:
    return MaskedLMTask(config, encoder_dims)
