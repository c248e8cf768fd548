"""Adapters from the ``peft`` library on an encoder (``encoders.<name>.peft``), merging them for
saving, and the trainable-parameter report.

Adapters are injected into the encoder module in place (``peft.inject_adapter_in_model``), so
the encoder keeps its mmfuse interface and any ``nn.Module`` works: a transformers model, a timm or
torchvision backbone (peft's custom-model support). peft freezes everything but the adapters; the
fusion head and the tasks train as usual. ``merge_adapters`` folds the adapters into the weights
before the model folder is written, whose recipe then no longer names them. Virtual tokens
(prompt / prefix / p-tuning) are added by mmfuse/peft_prompts.py and are never merged."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmfuse.peft_config import PeftSettings

__all__ = ["add_adapters", "merge_adapters", "model_for_saving", "trainable_summary", "adapter_layers"]


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "encoders.<name>.peft needs the peft library: pip install 'mmfuse[peft]'"
        ) from exc
    return peft


def _peft_config(settings: PeftSettings) -> Any:
    peft = _peft()
    targets = settings.target_modules
    if settings.method == "lora":
        return peft.LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=targets, bias=settings.bias,
        )
    return peft.IA3Config(target_modules=targets, feedforward_modules=settings.feedforward_modules or [])


def add_adapters(encoder: nn.Module, settings: PeftSettings, where: str) -> nn.Module:
    """Inject ``settings``' adapters into ``encoder`` in place; only adapters stay trainable.
    A ValueError names ``where`` (``encoders.text``) and the modules that could be targeted.
    Virtual-token methods (prompt_tuning, prefix_tuning, p_tuning) go to mmfuse/peft_prompts.py."""
    if settings.adds_virtual_tokens:
        _peft()  # the error naming the extra when peft is missing
        from mmfuse.peft_prompts import add_virtual_tokens

        return add_virtual_tokens(encoder, settings, where)
    try:
        _peft().inject_adapter_in_model(_peft_config(settings), encoder)
    except ValueError as exc:
        adaptable = [name for name, module in encoder.named_modules()
                     if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and name]
        # short names (query, qkv) where they are names; whole paths where the last part is an index
        short = {name.rsplit(".", 1)[-1] for name in adaptable}
        candidates = sorted(short) if not any(s.isdigit() for s in short) else adaptable
        raise ValueError(
            f"{where}.peft: {exc} Modules in this encoder that adapters can target: {', '.join(candidates[:16])}"
        ) from exc
    return encoder


def adapter_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every peft adapter layer inside ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, BaseTunerLayer)]


def merge_adapters(encoder: nn.Module) -> int:
    """Fold every adapter of ``encoder`` into its base layer and put the base layer back in its
    place (the module tree and state-dict keys of the plain encoder); return how many merged."""
    layers = adapter_layers(encoder)
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        setattr(parent, child, layer.get_base_layer())
    return len(layers)


def model_for_saving(model: nn.Module, recipe: Any) -> tuple[nn.Module, Any]:
    """The model and recipe to write as a model folder: encoders whose ``peft.merge_adapters`` is
    set have their adapters merged (in place: call this after training) and lose the ``peft``
    key in the returned recipe copy; anything else is returned unchanged."""
    merged = [name for name, slot in recipe.encoders.items() if slot.peft is not None and slot.peft.merge_adapters]
    if not merged:
        return model, recipe
    recipe = recipe.model_copy(deep=True)
    for name in merged:
        merge_adapters(model.encoders[name])
        recipe.encoders[name].peft = None
    return model, recipe


def trainable_summary(model: nn.Module) -> str:
    """``trainable parameters: N of M (p %); encoders.text: a of b, ...`` for the log."""
    def counts(module: nn.Module) -> tuple[int, int]:
        params = list(module.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    trainable, total = counts(model)
    parts = []
    for name, encoder in getattr(model, "encoders", {}).items():
        t, n = counts(encoder)
        parts.append(f"encoders.{name} {t:,} of {n:,}")
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable parameters: {trainable:,} of {total:,} ({share:.2f} %); " + ", ".join(parts)
