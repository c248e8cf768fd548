"""Virtual tokens from the ``peft`` library on a transformers text encoder
(``encoders.<name>.peft.method: prompt_tuning | prefix_tuning | p_tuning``).

peft builds the trainable part (``PromptEmbedding``, ``PrefixEncoder``, ``PromptEncoder``) and
formats it for the model (``PeftModel.get_prompt``: embeddings, or a key/value cache for prefix
tuning). mmfuse keeps the encoder's transformers model where it is (``encoder.model``: same
module, same state-dict keys, still a ``PreTrainedModel``) and puts two forward hooks on it:

- before: the virtual tokens go in front of the input (``inputs_embeds`` for prompt / p-tuning,
  ``past_key_values`` for prefix tuning) and the attention mask grows by as many ones;
- after: the hidden states of the virtual positions are cut off.

So the model, called exactly as before, returns one state per REAL input token: the encoder's
``EncoderOutput.tokens`` / ``mask`` keep the preprocessor's length, CLS pooling reads the real
first token, mean pooling averages real tokens only, and token-level tasks (spans, tagging,
masked LM) index tokens as they always did. docs/pretraining.md explains the choice.

A short forward at build time proves the method works with the model (and that the prefix
changes the output: a model that silently ignores ``past_key_values`` is refused), and a forward
at the encoder's ``max_length`` proves the position embeddings have room for the virtual tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.peft_config import PeftSettings

__all__ = ["add_virtual_tokens", "VirtualTokenHooks", "VIRTUAL_TOKENS_MODULE"]

#: attribute of the transformers model that holds the trainable virtual-token module
VIRTUAL_TOKENS_MODULE = "virtual_tokens"

#: encoder families measured to work, per method (tests/pretrain/test_peft_prompts.py); others are
#: tried at build time and refused with the reason when they fail
MEASURED = {
    "prompt_tuning": "bert, distilbert, roberta",
    "p_tuning": "bert, distilbert, roberta",
    "prefix_tuning": "bert, roberta (not distilbert: it ignores past keys and values)",
}


def _peft_config(settings: PeftSettings, model_config: Any) -> Any:
    import peft

    shape = {
        "task_type": peft.TaskType.FEATURE_EXTRACTION,
        "num_virtual_tokens": settings.num_virtual_tokens,
        # from the transformers config's standard names (DistilBERT maps dim -> hidden_size)
        "token_dim": int(model_config.hidden_size),
        "num_layers": int(model_config.num_hidden_layers),
        "num_attention_heads": int(model_config.num_attention_heads),
    }
    if settings.method == "prompt_tuning":
        return peft.PromptTuningConfig(**shape)  # init: text is done here, with the encoder's tokenizer
    if settings.method == "p_tuning":
        return peft.PromptEncoderConfig(
            **shape,
            encoder_reparameterization_type=settings.encoder_reparameterization_type,
            encoder_hidden_size=settings.encoder_hidden_size or int(model_config.hidden_size),
        )
    return peft.PrefixTuningConfig(
        **shape,
        prefix_projection=settings.prefix_projection,
        encoder_hidden_size=settings.encoder_hidden_size or int(model_config.hidden_size),
    )


class VirtualTokenHooks:
    """The two forward hooks of one transformers model with virtual tokens. Holds the
    ``peft.PeftModel`` built around the model (for ``get_prompt``); the trainable module itself
    is registered on the model as ``virtual_tokens``. ``enabled = False`` runs the plain model."""

    def __init__(self, peft_model: nn.Module, method: str, count: int) -> None:
        self.peft_model = peft_model
        self.method = method
        self.count = count
        self.enabled = True

    def before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if not self.enabled:
            return args, kwargs
        if args or kwargs.get("input_ids") is None:
            raise TypeError(
                f"a model with {self.method} virtual tokens is called with keyword arguments and input_ids "
                "(model(input_ids=..., attention_mask=...))"
            )
        input_ids: Tensor = kwargs.pop("input_ids")
        batch = input_ids.shape[0]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, self.count), mask], dim=1)
        prompt = self.peft_model.get_prompt(batch_size=batch)
        if self.method == "prefix_tuning":
            # keys and values of the virtual tokens in every layer; the hidden states keep the real length
            kwargs["input_ids"] = input_ids
            kwargs["past_key_values"] = prompt
            return args, kwargs
        embeddings = module.get_input_embeddings()(input_ids)
        kwargs["inputs_embeds"] = torch.cat([prompt.to(embeddings.dtype), embeddings], dim=1)
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:  # virtual tokens are segment 0; the real tokens keep theirs
            kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(batch, self.count), token_types], dim=1)
        return args, kwargs

    def after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not self.enabled or self.method == "prefix_tuning":
            return output
        output["last_hidden_state"] = output["last_hidden_state"][:, self.count:]
        if output.get("hidden_states") is not None:
            output["hidden_states"] = tuple(states[:, self.count:] for states in output["hidden_states"])
        return output


def add_virtual_tokens(encoder: nn.Module, settings: PeftSettings, where: str) -> nn.Module:
    """Give ``encoder``'s transformers model ``settings``' virtual tokens (in place); only they
    stay trainable in the encoder. A ValueError names ``{where}.peft.method`` (or the key to
    change) when the encoder or its model cannot take them."""
    from transformers import PreTrainedModel

    import peft

    model = getattr(encoder, "model", None)
    if getattr(encoder, "modality", None) != "text" or not isinstance(model, PreTrainedModel):
        raise ValueError(
            f"{where}.peft.method: {settings.method} needs a text encoder whose backbone is a transformers "
            f"model (type: text_hf or text_windows); this encoder is a {type(encoder).__name__}. "
            "Use method: lora or ia3 for other encoders"
        )
    if model.get_input_embeddings() is None:
        raise ValueError(f"{where}.peft.method: {settings.method} needs a model with input word embeddings")
    peft_model = peft.PeftModelForFeatureExtraction(model, _peft_config(settings, model.config))
    trainable = peft_model.prompt_encoder[peft_model.active_adapter]
    if settings.init == "text":
        _embed_text(trainable, model, encoder.tokenizer, settings, where)
    model.requires_grad_(False)  # peft froze the base model's children; the same for any direct parameter
    model.add_module(VIRTUAL_TOKENS_MODULE, trainable)
    trainable.requires_grad_(True)
    hooks = VirtualTokenHooks(peft_model, settings.method, settings.num_virtual_tokens)
    model.register_forward_pre_hook(hooks.before, with_kwargs=True)
    model.register_forward_hook(hooks.after, with_kwargs=True)
    _probe(model, hooks, settings, where, getattr(getattr(encoder, "config", None), "max_length", None))
    return encoder


def _embed_text(trainable: nn.Module, model: nn.Module, tokenizer: Any, settings: PeftSettings, where: str) -> None:
    """The virtual tokens start as the word embeddings of ``init_text``'s tokens, repeated or cut
    to ``num_virtual_tokens`` (as peft's ``prompt_tuning_init: TEXT``, without special tokens)."""
    ids = tokenizer(settings.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{where}.peft.init_text: {settings.init_text!r} has no tokens")
    count = settings.num_virtual_tokens
    ids = (ids * (count // len(ids) + 1))[:count]
    with torch.no_grad():
        weights = model.get_input_embeddings().weight
        trainable.embedding.weight.copy_(weights[torch.tensor(ids, device=weights.device)])


def _probe(model: nn.Module, hooks: VirtualTokenHooks, settings: PeftSettings, where: str, max_length: int | None) -> None:
    """Forward a short and a ``max_length`` input (no gradients, eval mode, no random numbers
    drawn); a failure becomes a ValueError saying what to change."""
    supported = "; ".join(f"{method}: {families}" for method, families in MEASURED.items())
    kind = getattr(model.config, "model_type", type(model).__name__)
    pad = getattr(model.config, "pad_token_id", None)
    token = 2 if pad == 1 else 1  # a real token: RoBERTa numbers positions from input ids, skipping pads
    device = model.get_input_embeddings().weight.device

    def run(length: int) -> Tensor:
        ids = torch.full((1, length), token, dtype=torch.long, device=device)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                with_tokens = run(2)
            except Exception as exc:  # noqa: BLE001 - any failure of the model means: unsupported
                raise ValueError(
                    f"{where}.peft.method: {settings.method} does not work with this {kind} model "
                    f"({type(exc).__name__}: {exc}). Measured to work: {supported}"
                ) from exc
            if with_tokens.shape[1] != 2:
                raise ValueError(f"{where}.peft.method: {settings.method} on this {kind} model returns "
                                 f"{with_tokens.shape[1]} states for 2 input tokens. Measured to work: {supported}")
            if settings.method == "prefix_tuning":
                hooks.enabled = False
                try:
                    plain = run(2)
                finally:
                    hooks.enabled = True
                if torch.equal(plain, with_tokens):
                    raise ValueError(
                        f"{where}.peft.method: prefix_tuning has no effect on this {kind} model (it ignores "
                        f"past_key_values). Use prompt_tuning or p_tuning. Measured to work: {supported}"
                    )
            if max_length is not None:
                try:
                    run(int(max_length))
                except Exception as exc:  # noqa: BLE001
                    limit = getattr(model.config, "max_position_embeddings", "?")
                    raise ValueError(
                        f"{where}.peft.num_virtual_tokens: {settings.num_virtual_tokens} virtual tokens and "
                        f"max_length {max_length} do not fit the model's {limit} positions "
                        f"({type(exc).__name__}: {exc}); lower max_length or num_virtual_tokens"
                    ) from exc
    finally:
        model.train(training)
