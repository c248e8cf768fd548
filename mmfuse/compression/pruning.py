"""Magnitude pruning as a training stage: prune once, then fine-tune with the pruned weights
held at zero, in the same run, with the same optimizer.

Masks are computed by ``torch.nn.utils.prune`` (``l1_unstructured`` per layer, ``ln_structured``
on output channels, or ``global_unstructured`` across the selected layers) and made permanent at
once with ``prune.remove``: the weight stays the same ``nn.Parameter`` (so the one optimizer keeps
training it) and the model's state dict keeps its keys (so checkpoints, model folders, the
Predictor and export need nothing special). While fine-tuning, the callback zeroes the pruned
entries' gradients before each optimizer step and the weights after it, so neither momentum nor
weight decay can regrow them. The masks are callback state, saved in checkpoints: a resumed run
keeps them. Pruning restarts the best-checkpoint and early-stopping bookkeeping: the dense weights
before it are never restored as "best". ``pruning.json`` in the run folder reports the sparsity of every pruned layer and the
validation metrics at pruning time and at the end.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune

from mmfuse.compression import PruningConfig
from mmfuse.engine.callbacks import Callback, Checkpointing, EarlyStopping

if TYPE_CHECKING:
    from mmfuse.engine.trainer import FitResult, Trainer

__all__ = ["Pruning", "build_pruning", "prunable_layers", "compute_masks", "sparsity"]

_LAYER_TYPES = {"linear": (nn.Linear,), "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d)}


def prunable_layers(model: nn.Module, config: PruningConfig) -> dict[str, nn.Module]:
    """The layers ``config`` selects: their kinds, under its module prefixes, with a trainable weight."""
    kinds = tuple(t for name in config.layers for t in _LAYER_TYPES[name])
    prefixes = config.modules
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, kinds)
        and module.weight.requires_grad
        and (not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes))
    }
    if not layers:
        where = f" under {', '.join(prefixes)}" if prefixes else ""
        raise ValueError(f"pruning found no trainable {'/'.join(config.layers)} layer{where}; check callbacks[].modules")
    return layers


def compute_masks(layers: dict[str, nn.Module], config: PruningConfig) -> dict[str, torch.Tensor]:
    """Prune ``layers`` in place with torch.nn.utils.prune and make it permanent; return the masks."""
    if config.method == "global":
        prune.global_unstructured(
            [(module, "weight") for module in layers.values()], pruning_method=prune.L1Unstructured, amount=config.amount
        )
    else:
        for module in layers.values():
            if config.method == "magnitude":
                prune.l1_unstructured(module, "weight", amount=config.amount)
            else:
                prune.ln_structured(module, "weight", amount=config.amount, n=2, dim=0)
    masks = {}
    for name, module in layers.items():
        masks[name] = module.weight_mask.detach().bool().clone()
        prune.remove(module, "weight")  # the same Parameter, now holding the pruned values
    return masks


def sparsity(layers: dict[str, nn.Module]) -> dict[str, float]:
    """Fraction of exactly-zero weights per layer, and over all of them (``"all"``)."""
    result = {name: float((module.weight == 0).float().mean()) for name, module in layers.items()}
    total = sum(module.weight.numel() for module in layers.values())
    zeros = sum(int((module.weight == 0).sum()) for module in layers.values())
    result["all"] = zeros / total if total else 0.0
    return result


class Pruning(Callback):
    """Prune at ``at_epoch`` / ``at_step``; keep pruned weights at zero for the rest of the fit."""

    def __init__(self, config: PruningConfig) -> None:
        self.config = config
        self.masks: dict[str, torch.Tensor] = {}
        self.pruned_at_step: int | None = None
        self.metrics_at_pruning: dict[str, float] = {}
        self._latest_metrics: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return "Pruning"

    # -- when to prune
    def on_train_epoch_start(self, trainer: "Trainer") -> None:
        if self.config.at_epoch is not None and not self.masks and trainer.epoch >= self.config.at_epoch:
            self._prune(trainer)

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        if self.masks:
            self._apply_masks(trainer.model, weights=True)
        elif self.config.at_step is not None and trainer.global_step >= self.config.at_step:
            self._prune(trainer)

    def on_before_optimizer_step(self, trainer: "Trainer") -> None:
        if self.masks:
            self._apply_masks(trainer.model, weights=False)

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._latest_metrics = dict(metrics)

    def _prune(self, trainer: "Trainer") -> None:
        layers = prunable_layers(trainer.model, self.config)
        with torch.no_grad():
            self.masks = compute_masks(layers, self.config)
        self.pruned_at_step = trainer.global_step
        self.metrics_at_pruning = dict(self._latest_metrics)
        self._restart_best_tracking(trainer)
        achieved = sparsity(layers)["all"]
        trainer.log(
            f"pruning: {len(layers)} layers, {self.config.method} at amount {self.config.amount} -> "
            f"{achieved:.1%} of their weights are zero (step {trainer.global_step}); fine-tuning goes on"
        )

    @staticmethod
    def _restart_best_tracking(trainer: "Trainer") -> None:
        """The dense weights before pruning are not candidates: the best checkpoint (restored at
        the end with trainer.restore_best) and early stopping's patience start over from here."""
        for callback in trainer.callbacks:
            if isinstance(callback, Checkpointing):
                callback.best_value, callback.best_name = None, None
            elif isinstance(callback, EarlyStopping):
                callback.best, callback.bad_evaluations = None, 0

    def _apply_masks(self, model: nn.Module, weights: bool) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight = modules[name].weight
                mask = mask.to(weight.device)
                if weights:
                    weight.mul_(mask)
                elif weight.grad is not None:
                    weight.grad.mul_(mask)

    # -- report
    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        if not self.masks or not trainer.is_main:
            return
        modules = dict(trainer.model.named_modules())
        report = {
            "method": self.config.method,
            "amount": self.config.amount,
            "pruned_at_step": self.pruned_at_step,
            "sparsity": sparsity({name: modules[name] for name in self.masks}),
            "val_metrics_before_pruning": self.metrics_at_pruning,
            "val_metrics_at_end": dict(self._latest_metrics),
        }
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        (trainer.run_dir / "pruning.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        trainer.log(f"pruning: {report['sparsity']['all']:.1%} of the pruned layers' weights are zero at the end")

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {name: mask.cpu() for name, mask in self.masks.items()},
            "pruned_at_step": self.pruned_at_step,
            "metrics_at_pruning": self.metrics_at_pruning,
            "latest_metrics": self._latest_metrics,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {name: torch.as_tensor(mask).bool() for name, mask in state.get("masks", {}).items()}
        self.pruned_at_step = state.get("pruned_at_step")
        self.metrics_at_pruning = dict(state.get("metrics_at_pruning", {}))
        self._latest_metrics = dict(state.get("latest_metrics", {}))


def build_pruning(config: PruningConfig) -> Pruning:
    """Builder of the ``mmfuse/prune`` callback."""
    return Pruning(config)
