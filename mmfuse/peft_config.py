"""``encoders.<name>.peft``: parameter-efficient fine-tuning settings of one encoder. Imports no
torch and no peft (``mmfuse validate`` checks them without either installed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PeftSettings", "ADAPTER_METHODS", "VIRTUAL_TOKEN_METHODS"]

#: methods that add trainable layers inside the encoder (mmfuse/peft_adapters.py)
ADAPTER_METHODS = ("lora", "ia3")
#: methods that add trainable virtual tokens in front of a transformers text model's input
#: (mmfuse/peft_prompts.py)
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")

_FIELDS_OF = {
    "lora": {"target_modules", "r", "alpha", "dropout", "bias"},
    "ia3": {"target_modules", "feedforward_modules"},
    "prompt_tuning": {"num_virtual_tokens", "init", "init_text"},
    "prefix_tuning": {"num_virtual_tokens", "prefix_projection", "encoder_hidden_size"},
    "p_tuning": {"num_virtual_tokens", "encoder_hidden_size", "encoder_reparameterization_type"},
}


class PeftSettings(BaseModel):
    """Adapters or virtual tokens added to an encoder with the ``peft`` library (extra
    ``mmfuse[peft]``): the encoder's own weights are frozen, only what peft adds trains (with the
    fusion head and the tasks).

    ``lora`` / ``ia3``: ``target_modules`` are module names inside the encoder, matched as peft
    matches them (a name ends with one of them, or a regular expression when a single string):
    ``[query, value]`` for BERT, ``[qkv]`` for a timm ViT, ``[conv2]`` for a ResNet's convolutions.

    ``prompt_tuning`` / ``p_tuning`` / ``prefix_tuning``: ``num_virtual_tokens`` trainable tokens in
    front of every text of a transformers text encoder (text_hf, text_windows); the encoder still
    returns one token per real input token (docs/pretraining.md explains why)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"] = Field(
        ...,
        description="lora (low-rank updates), ia3 (learned rescaling), prompt_tuning (learned input "
        "embeddings), p_tuning (input embeddings from a small MLP/LSTM), prefix_tuning (learned keys "
        "and values in every attention layer)",
    )
    target_modules: list[str] | str | None = Field(
        None, description="lora, ia3: modules to adapt: names, or one regular expression"
    )
    r: int = Field(8, ge=1, description="lora: rank of the update")
    alpha: float = Field(16.0, gt=0, description="lora: scaling numerator (update scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="lora: dropout on the adapter's input")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="lora: which biases train")
    feedforward_modules: list[str] | None = Field(
        None, description="ia3: the targets that are feed-forward layers (their input is rescaled, not their output)"
    )
    num_virtual_tokens: int = Field(
        8, ge=1, description="prompt_tuning, p_tuning, prefix_tuning: how many virtual tokens"
    )
    init: Literal["random", "text"] = Field(
        "random", description="prompt_tuning: start the virtual tokens random, or as the embeddings of init_text"
    )
    init_text: str | None = Field(
        None, description="prompt_tuning with init: text: its tokens (repeated or cut to num_virtual_tokens)"
    )
    prefix_projection: bool = Field(
        False, description="prefix_tuning: compute the keys and values with a two-layer MLP (peft's reparameterisation)"
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="prefix_tuning with prefix_projection, p_tuning: hidden size of the MLP; default: the model's"
    )
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field(
        "MLP", description="p_tuning: the network that computes the virtual tokens"
    )
    merge_adapters: bool = Field(
        False, description="lora, ia3: the saved model folder holds the adapters merged into the weights (plain encoder) instead of separately"
    )

    @property
    def adds_virtual_tokens(self) -> bool:
        return self.method in VIRTUAL_TOKEN_METHODS

    @model_validator(mode="after")
    def _method_fields(self) -> "PeftSettings":
        foreign = sorted(
            key for key in self.model_fields_set - _FIELDS_OF[self.method] - {"method", "merge_adapters"}
            if getattr(self, key) is not None
        )
        if foreign:
            by_owner: dict[str, list[str]] = {}
            for key in foreign:
                by_owner.setdefault(" or ".join(m for m, keys in _FIELDS_OF.items() if key in keys), []).append(key)
            raise ValueError("; ".join(f"{', '.join(keys)} apply to method: {owner} only" for owner, keys in by_owner.items()))
        if self.method in ADAPTER_METHODS and not self.target_modules:
            raise ValueError(
                f"method: {self.method} needs target_modules: name the modules to adapt, e.g. [query, value]"
            )
        if self.method == "ia3" and self.feedforward_modules and isinstance(self.target_modules, list):
            outside = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if outside:
                raise ValueError(f"feedforward_modules {outside} must also be in target_modules")
        if self.adds_virtual_tokens and self.merge_adapters:
            raise ValueError(
                f"merge_adapters: {self.method} cannot be merged into the encoder's weights (its virtual "
                "tokens are extra inputs, not a weight update); remove merge_adapters: the model folder "
                "stores the virtual tokens next to the unchanged encoder weights"
            )
        if self.method == "prompt_tuning" and (self.init == "text") != (self.init_text is not None):
            raise ValueError("init: text and init_text go together: set both (init_text: 'classify the topic:') or neither")
        if self.method == "prefix_tuning" and self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size applies to prefix_tuning with prefix_projection: true only")
        return self
