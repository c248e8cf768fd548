"""ONE optimizer over a FusedModel, with parameter groups per module.

Groups are named ``encoders.<name>``, ``fusion``, ``tasks.<name>`` (``tasks.<name>.unimodal`` for its
auxiliary unimodal heads), ``loss_weighting`` (plus a
``.no_decay`` twin holding biases and normalization weights, unless
``optimizer.decay_bias_and_norm`` is set). Each group carries its module's lr and weight decay
from the recipe. Frozen parameters are left out; staged fine-tuning adds them later with
:func:`param_groups` + ``optimizer.add_param_group`` so the optimizer's state is kept.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from mmfuse.engine.config import OptimizerConfig
from mmfuse.layer_decay import split_by_layer_decay
from mmfuse.recipe import Recipe

__all__ = ["module_settings", "param_groups", "build_optimizer", "make_optimizer"]

_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}


def module_settings(model: nn.Module, recipe: Recipe | OptimizerConfig) -> dict[str, tuple[nn.Module, float, float]]:
    """Group name -> (module, lr, weight_decay), for every top-level part of a FusedModel.

    Given an OptimizerConfig instead of a Recipe (a model trained from Python without a recipe),
    every part takes the optimizer's lr and weight decay."""
    if isinstance(recipe, OptimizerConfig):
        return _uniform_settings(model, recipe)
    opt = recipe.optimizer
    settings: dict[str, tuple[nn.Module, float, float]] = {}
    for name, module in model.encoders.items():  # type: ignore[attr-defined]
        slot = recipe.encoders[name]
        settings[f"encoders.{name}"] = (module, slot.lr or opt.lr, _pick(slot.weight_decay, opt.weight_decay))
    fusion = recipe.fusion
    settings["fusion"] = (model.fusion, fusion.lr or opt.lr, _pick(fusion.weight_decay, opt.weight_decay))  # type: ignore[attr-defined]
    for name, module in model.tasks.items():  # type: ignore[attr-defined]
        slot = recipe.tasks[name]
        settings[f"tasks.{name}"] = (module, slot.lr or opt.lr, _pick(slot.weight_decay, opt.weight_decay))
        unimodal = _unimodal_heads_of(model, name)
        if unimodal is not None:  # tasks.<name>.unimodal_aux: trained like the task's own head
            settings[f"tasks.{name}.unimodal"] = (unimodal, slot.lr or opt.lr, _pick(slot.weight_decay, opt.weight_decay))
    settings["loss_weighting"] = (model.loss_weighting, opt.lr, 0.0)  # type: ignore[attr-defined]
    return settings


def _unimodal_heads_of(model: nn.Module, task: str) -> nn.Module | None:
    heads = getattr(model, "unimodal_heads", None)
    return heads.heads[task] if heads is not None and task in heads.heads else None


def _uniform_settings(model: nn.Module, opt: OptimizerConfig) -> dict[str, tuple[nn.Module, float, float]]:
    parts = {f"encoders.{name}": module for name, module in model.encoders.items()}  # type: ignore[attr-defined]
    parts["fusion"] = model.fusion  # type: ignore[assignment]
    parts.update({f"tasks.{name}": module for name, module in model.tasks.items()})  # type: ignore[attr-defined]
    for name in model.tasks:  # type: ignore[attr-defined]
        unimodal = _unimodal_heads_of(model, name)
        if unimodal is not None:
            parts[f"tasks.{name}.unimodal"] = unimodal
    settings = {name: (module, opt.lr, opt.weight_decay) for name, module in parts.items()}
    settings["loss_weighting"] = (model.loss_weighting, opt.lr, 0.0)  # type: ignore[assignment]
    return settings


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(
    model: nn.Module,
    recipe: Recipe | OptimizerConfig,
    only: Iterable[str] | None = None,
    lr: float | None = None,
    exclude: set[int] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for the trainable parameters of the named modules (default: all).

    ``exclude`` holds ``id()``s of parameters already in an optimizer, so a parameter is never
    placed twice. ``lr`` overrides the modules' lr (staged unfreezing).
    """
    wanted = set(only) if only is not None else None
    seen: set[int] = set(exclude or ())
    groups: list[dict[str, Any]] = []
    optimizer = recipe if isinstance(recipe, OptimizerConfig) else recipe.optimizer
    decay_all = optimizer.decay_bias_and_norm
    for group_name, (module, group_lr, weight_decay) in module_settings(model, recipe).items():
        if wanted is not None and group_name not in wanted and group_name.split(".", 1)[-1] not in wanted:
            continue
        decay, no_decay = [], []
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if (not decay_all and _is_no_decay(name, param)) else decay).append(param)
        used_lr = lr if lr is not None else group_lr
        if decay:
            groups.append({"name": group_name, "params": decay, "lr": used_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{group_name}.no_decay", "params": no_decay, "lr": used_lr, "weight_decay": 0.0})
    return split_by_layer_decay(groups, model, optimizer.lr_layer_decay)


def make_optimizer(groups: list[dict[str, Any]], config: OptimizerConfig) -> torch.optim.Optimizer:
    """Instantiate the configured optimizer, preferring PyTorch's fused kernels ('auto')."""
    cls = _OPTIMIZERS[config.name]
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.name == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    elif config.name in ("adam", "adamw"):
        kwargs.update(betas=config.betas, eps=config.eps)
    elif config.name == "adagrad":
        kwargs.update(eps=config.eps)
    elif config.name == "adadelta":
        kwargs.update(eps=config.eps, rho=config.rho)
    if not groups:
        raise ValueError(
            "no trainable parameters: every module is frozen. Unfreeze an encoder "
            "(encoders.<name>.freeze: false) or check the fusion head and tasks."
        )
    impl = config.implementation
    if impl in ("auto", "fused"):
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            if impl == "fused":
                raise
    if impl in ("auto", "foreach"):
        return cls(groups, foreach=True, **kwargs)
    return cls(groups, foreach=False, **kwargs)


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """ONE optimizer whose groups cover every trainable parameter exactly once."""
    return make_optimizer(param_groups(model, recipe), recipe.optimizer)
