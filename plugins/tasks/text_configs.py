"""Config classes of the token-level and text-generation tasks, and the torch-free parsing of
their target values (``mmfuse validate`` and ``fit_targets`` import this without torch).
docs/fusion_and_tasks.md describes each task and its target format."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ExtractiveQAConfig",
    "TokenClassificationConfig",
    "GenerationConfig",
    "parse_answers",
    "parse_tags",
    "parse_generation_target",
]


class ExtractiveQAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: metric keys of this task's evaluation (``val/<task>/<metric>``), checked by `mmfuse validate`
    metric_names: ClassVar[tuple[str, ...]] = ("exact_match", "f1")

    encoder: str | None = Field(
        None, description="the encoder whose tokens hold the context (mmfuse/text_windows); default: the only encoder"
    )
    add_fused: bool = Field(False, description="add a projection of the fused vector (image/audio context) to every token")
    max_answer_tokens: int = Field(30, gt=0, description="longest answer, in tokens, considered when predicting")
    dropout: float = Field(0.1, ge=0, lt=1)


class TokenClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``data.split`` does not stratify on tag sequences (nearly every row is its own group)
    stratify_split: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ("entity_precision", "entity_recall", "entity_f1", "word_accuracy")

    labels: list[str] | None = Field(
        None, description="tag vocabulary in index order (B-PER, I-PER, O...); default: learned from the training split"
    )
    encoder: str | None = Field(
        None, description="the encoder whose tokens are tagged (mmfuse/text_windows); default: the only encoder"
    )
    add_fused: bool = Field(False, description="add a projection of the fused vector to every token")
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer in the per-token head")
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "TokenClassificationConfig":
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"token_classification needs at least 2 unique labels, got {self.labels}")
        return self

    def fit_targets(self, values: list[Any]) -> "TokenClassificationConfig":
        """Learn the tag vocabulary from the training targets ("O" first, then sorted)."""
        if self.labels is not None:
            return self
        tags = {tag for value in values if value is not None for tag in parse_tags(value)}
        if len(tags) < 2:
            raise ValueError(f"token_classification: the training targets hold fewer than 2 tags ({sorted(tags)}); give 'labels'")
        labels = (["O"] if "O" in tags else []) + sorted(tags - {"O"}, key=lambda tag: (tag[2:], tag))
        return self.model_copy(update={"labels": labels})


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: bleu and rougeL are reported only with eval_generate (the default)
    metric_names: ClassVar[tuple[str, ...]] = ("perplexity", "bleu", "rougeL")

    model: str = Field(..., description="causal LM: hub name ('gpt2') or local folder saved with save_pretrained")
    tokenizer: str | None = Field(None, description="tokenizer name or folder; default: same as model")
    pretrained: bool = Field(True, description="load pretrained LM weights; false builds it from its config")
    condition: Literal["fused", "tokens", "none"] = Field(
        "fused",
        description="fused: the fused vector -> prefix_length LM tokens (ClipCap); tokens: every encoder token "
        "projected into the LM (LLaVA); none: text only (plain LM fine-tuning on prompt -> text)",
    )
    prefix_length: int = Field(4, gt=0, description="LM tokens made from the fused vector (condition: fused)")
    projector: Literal["linear", "mlp"] = Field("mlp", description="map into the LM's embedding space")
    encoders: list[str] | None = Field(None, description="encoders whose tokens are projected (condition: tokens); default: all")
    lm_training: Literal["full", "frozen", "lora"] = Field(
        "full", description="fine-tune the whole LM, freeze it (only the projector learns) or train LoRA adapters (peft)"
    )
    lora_r: int = Field(8, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(None, description="default: peft's choice for the architecture")
    prompt: str | None = Field(None, description="text put before every target ('A picture of'); a target's own prompt wins")
    max_target_tokens: int = Field(64, gt=0, description="target text tokens kept (longer targets are cut)")
    max_new_tokens: int = Field(32, gt=0, description="decoding: most tokens generated")
    num_beams: int = Field(1, gt=0, description="decoding: beam search width (1 = greedy or sampling)")
    do_sample: bool = Field(False, description="decoding: sample instead of greedy / beam search")
    temperature: float = Field(1.0, gt=0, description="decoding: sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="decoding: nucleus sampling mass")
    eval_generate: bool = Field(True, description="decode the validation set for BLEU / ROUGE-L (greedy)")

    @model_validator(mode="after")
    def _check(self) -> "GenerationConfig":
        if self.encoders is not None and self.condition != "tokens":
            raise ValueError("'encoders' applies to condition: tokens only")
        return self

    def conformance_targets(self) -> list[Any]:
        return ["a cat on a mat", {"prompt": "what is it?", "text": "a dog"}, "sound", "a red video"]


def parse_answers(value: Any) -> list[tuple[int, int]]:
    """A QA target -> character spans ``[(start, end), ...]`` (end exclusive).

    Accepted: ``{"text": "Paris", "answer_start": 10}``, SQuAD's ``{"text": [...],
    "answer_start": [...]}``, or either as a JSON string (CSV manifests)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a QA target must be {{'text': ..., 'answer_start': ...}}; got text that is not JSON: {value[:80]!r}") from exc
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise ValueError(f"a QA target must be {{'text': 'Paris', 'answer_start': 10}}, got {value!r:.120}")
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, list):
        texts, starts = [texts], [starts]
    if not isinstance(starts, list) or len(texts) != len(starts) or not texts:
        raise ValueError(f"'text' and 'answer_start' must both be one value or lists of one length, got {value!r:.120}")
    spans = []
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"an answer needs non-empty 'text' and an integer 'answer_start' >= 0, got {text!r} at {start!r}")
        spans.append((start, start + len(text)))
    return spans


def parse_tags(value: Any) -> list[str]:
    """A tagging target -> one tag per word: a list, or a string of tags separated by spaces."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)) and all(isinstance(tag, str) for tag in value):
        return list(value)
    raise ValueError(f"a token_classification target is a list of tags or a space-separated string, got {value!r:.120}")


def parse_generation_target(value: Any) -> tuple[str | None, str]:
    """A generation target -> (prompt or None, text): a string, or ``{"prompt": ..., "text": ...}``
    (also as a JSON string)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, str):
        return None, value
    if isinstance(value, dict) and isinstance(value.get("text"), str) and isinstance(value.get("prompt", ""), str):
        unknown = set(value) - {"prompt", "text"}
        if not unknown:
            return value.get("prompt"), value["text"]
    raise ValueError(f"a generation target is a text or {{'prompt': ..., 'text': ...}}, got {value!r:.120}")
