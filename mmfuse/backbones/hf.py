"""transformers glue shared by the text, speech and video encoders: loading models, tokenizers and
processors by hub name or local folder with errors that say what to do offline; the layer groups
of a transformers model; its activation checkpointing; and mask-aware pooling of its tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from mmfuse.contracts import masked_mean

__all__ = [
    "from_pretrained_or_explain",
    "load_hf_model",
    "hf_layer_groups",
    "set_hf_grad_checkpointing",
    "pool_tokens",
]

Loaded = TypeVar("Loaded")


def from_pretrained_or_explain(load: Callable[[str], Loaded], name: str, what: str) -> Loaded:
    """``load(name)``; an OSError (name not on disk and not downloadable) is re-raised with a message
    naming ``what`` was looked for and how to fix it, the original chained."""
    try:
        return load(name)
    except OSError as exc:
        raise OSError(
            f"Cannot load the {what} '{name}': it is not a local folder saved with save_pretrained and "
            f"could not be fetched from the Hugging Face hub (no network, or HF_HUB_OFFLINE=1 is set). "
            f"Check the name, or point 'model' at a local folder. Original error: {exc}"
        ) from exc


def load_hf_model(name: str, *, pretrained: bool) -> nn.Module:
    """``AutoModel.from_pretrained`` when ``pretrained``, else the architecture from ``AutoConfig``
    with random weights (nothing downloaded beyond the config)."""
    from transformers import AutoConfig, AutoModel

    if pretrained:
        return from_pretrained_or_explain(AutoModel.from_pretrained, name, "transformers model")
    config = from_pretrained_or_explain(AutoConfig.from_pretrained, name, "transformers model config")
    return AutoModel.from_config(config)


def load_hf_text_backbone(model: str, tokenizer: str | None, *, pretrained: bool) -> tuple[nn.Module, Any]:
    """A transformers text model and its tokenizer (``tokenizer`` defaults to the model's name),
    loaded through from_pretrained with errors that say how to fix them."""
    from transformers import AutoTokenizer

    loaded_tokenizer = from_pretrained_or_explain(AutoTokenizer.from_pretrained, tokenizer or model, "tokenizer")
    return load_hf_model(model, pretrained=pretrained), loaded_tokenizer


def export_hf_text_assets(model: nn.Module, tokenizer: Any, folder: str) -> dict[str, Any]:
    """Write a text model's config and tokenizer into a model folder's assets; return the config
    overrides that rebuild it from there (weights come from the folder's safetensors)."""
    target = Path(folder).resolve()
    model.config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {"model": str(target), "tokenizer": None, "pretrained": False}


def hf_layer_groups(model: nn.Module) -> list[nn.Module]:
    """[modules before the layer stack (embeddings), each layer, modules after it (final norm)].

    The layer stack is the model's largest ``nn.ModuleList``; parameters are assigned to groups in
    registration order, which transformers keeps as input -> output."""
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        return [model]
    stack_name, stack = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    seen_stack = False
    for owner_name, parameters in _parameter_owners(model):
        if owner_name == stack_name or owner_name.startswith(stack_name + "."):
            seen_stack = True
        else:  # ancestors of the stack come first in registration order, so they join 'before'
            (after if seen_stack else before).append(parameters)
    groups: list[nn.Module] = []
    if before:
        groups.append(nn.ModuleList(before))
    groups.extend(stack)
    if after:
        groups.append(nn.ModuleList(after))
    return groups


def _parameter_owners(model: nn.Module) -> list[tuple[str, nn.ParameterList]]:
    """(module name, its directly owned parameters) for every module owning some, in registration
    order; a ParameterList so ``requires_grad_`` reaches those parameters and no others."""
    owners = []
    for name, module in model.named_modules():
        direct = list(module.parameters(recurse=False))
        if direct:
            owners.append((name, nn.ParameterList(direct)))
    return owners


def set_hf_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    """The model's own activation checkpointing (non-reentrant), under its transformers 5 or 4 name."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise NotImplementedError(f"{type(model).__name__} does not support gradient checkpointing")
    if not enable:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    elif hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def pool_tokens(tokens: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """Mask-aware pooling of ``[B, T, D]`` tokens: first token, mean or max over real tokens."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return masked_mean(tokens, mask)
    if pooling == "max":
        return tokens.masked_fill(~mask.unsqueeze(-1), torch.finfo(tokens.dtype).min).amax(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; expected cls, mean or max")
