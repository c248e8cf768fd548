"""Gradient modulation (OGM-GE) and modality-balanced learning rates, as engine callbacks.

Both read each modality's confidence on the step's batches from the auxiliary unimodal heads
(``tasks.<name>.unimodal_aux``): ``s_m`` = mean over the rows that have modality ``m`` of the
probability its head gives the true class. With ``rho_m = s_m / mean_{n != m} s_n``:

- **OGM-GE** (Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
  CVPR 2022): ``k_m = 1 - tanh(alpha * rho_m)`` when ``rho_m > 1``, else 1; every gradient of
  encoder ``m`` becomes ``k_m * g + n`` with ``n ~ N(0, std(g)^2)`` per tensor when ``noise`` is on
  (the paper's Generalization Enhancement; the noise scale follows the authors' code).
- **Modality-balanced lr**: ``lr_m = lr * clip((1 / rho_m) ** gamma, min_factor, max_factor)``
  with ``rho_m`` from a moving average of the confidences: a modality ahead learns slower, one
  behind faster (with Adam, scaling the gradient barely changes the step; scaling the lr does).

Both act in ``on_before_optimizer_step`` (after backward and unscaling, before clipping), touch
only encoder parameters, and all-reduce the confidences under DDP so every rank applies the same
factors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmfuse.balance.config import GradientModulationConfig, ModalityLRConfig
from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = [
    "confidence_ratios",
    "ogm_coefficients",
    "balanced_lr_factors",
    "GradientModulation",
    "ModalityBalancedLR",
    "build_balance_callbacks",
]


def confidence_ratios(scores: Tensor, valid: Tensor) -> Tensor:
    """``rho_m = s_m / mean_{n != m, valid} s_n`` for ``[M]`` scores; 1 where ``m`` is not valid or
    no other modality is (nothing to compare with)."""
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    others_sum = scores.sum() - scores
    others_count = valid.sum() - valid.to(torch.long)
    others_mean = others_sum / others_count.clamp_min(1)
    ratio = scores / others_mean.clamp_min(1e-8)
    return torch.where(valid & (others_count > 0), ratio, torch.ones_like(ratio))


def ogm_coefficients(scores: Tensor, valid: Tensor, alpha: float) -> Tensor:
    """OGM's ``k_m = 1 - tanh(alpha * rho_m)`` for ``rho_m > 1``, else 1."""
    ratio = confidence_ratios(scores, valid)
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


def balanced_lr_factors(scores: Tensor, valid: Tensor, config: ModalityLRConfig) -> Tensor:
    """``clip((1 / rho_m) ** gamma, min_factor, max_factor)``."""
    ratio = confidence_ratios(scores, valid)
    return ratio.clamp_min(1e-8).pow(-config.gamma).clamp(config.min_factor, config.max_factor)


class _ConfidenceReader(Callback):
    """Shared by both callbacks: resolve the task and read the step's confidences."""

    def __init__(self, task: str | None, option: str) -> None:
        self.task = task
        self.option = option
        self.encoders: list[str] = []

    def on_fit_start(self, trainer: "Trainer") -> None:
        heads = getattr(trainer.model, "unimodal_heads", None)
        tasks = list(heads.heads) if heads is not None else []
        if not tasks:
            raise ValueError(
                f"trainer.{self.option} needs per-modality confidences: add `unimodal_aux: {{weight: 0.3}}` "
                "to a task (tasks.<name>.unimodal_aux), or `{weight: 0.0, detach: true}` for probes only"
            )
        if self.task is None:
            self.task = tasks[0]
        elif self.task not in tasks:
            raise ValueError(
                f"trainer.{self.option}.task is '{self.task}', which has no unimodal_aux heads; "
                f"tasks with them: {', '.join(tasks)}"
            )
        self.encoders = [name for name in trainer.model.encoders if name in heads.heads[self.task]]

    def read_scores(self, trainer: "Trainer") -> tuple[Tensor, Tensor] | None:
        """(mean confidence ``[M]``, valid ``[M]``) over the step's micro-batches and all ranks."""
        taken = trainer.model.unimodal_heads.scores_of_step(self.task, trainer.global_step)
        if not taken:
            return None
        device = next(iter(taken.values())).device
        table = torch.zeros(len(self.encoders), 2, device=device)
        for index, name in enumerate(self.encoders):
            if name in taken:
                table[index] = taken[name]
        if trainer.context.is_distributed:
            from mmfuse.engine.distributed import all_reduce_sum

            all_reduce_sum(table, trainer.context)
        valid = table[:, 1] > 0
        return table[:, 0] / table[:, 1].clamp_min(1), valid


class GradientModulation(_ConfidenceReader):
    """``trainer.gradient_modulation``: OGM-GE on the encoders' gradients."""

    def __init__(self, config: GradientModulationConfig, seed: int | None = None) -> None:
        super().__init__(config.task, "gradient_modulation")
        self.config = config
        self.seed = seed  # of the noise; default: the trainer's seed
        #: the latest coefficients ``{encoder: k}`` as device tensors (for inspection and tests)
        self.last_coefficients: dict[str, Tensor] = {}

    def on_fit_start(self, trainer: "Trainer") -> None:
        super().on_fit_start(trainer)
        if self.seed is None:
            self.seed = int(getattr(trainer, "seed", 0))

    def on_before_optimizer_step(self, trainer: "Trainer") -> None:
        read = self.read_scores(trainer)
        step = trainer.global_step
        active = step >= self.config.start_step and (self.config.end_step is None or step <= self.config.end_step)
        if read is None or not active:
            return
        scores, valid = read
        coefficients = ogm_coefficients(scores, valid, self.config.alpha)
        generator = None
        if self.config.noise:
            # the same noise on every rank: DDP replicas must stay identical
            generator = torch.Generator(device=coefficients.device).manual_seed(self.seed * 1_000_003 + step)
        for index, name in enumerate(self.encoders):
            self.last_coefficients[name] = coefficients[index]
            for param in trainer.model.encoders[name].parameters():
                if param.grad is None:
                    continue
                grad = param.grad
                if generator is not None:
                    std = grad.float().std(correction=0) + 1e-8
                    noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=torch.float32)
                    grad.mul_(coefficients[index].to(grad.dtype)).add_((noise * std).to(grad.dtype))
                else:
                    grad.mul_(coefficients[index].to(grad.dtype))


class ModalityBalancedLR(_ConfidenceReader):
    """``trainer.modality_lr``: scale each encoder's parameter-group lr for this step.

    The factor multiplies the lr the schedule set for the step; the schedule writes every group's
    lr afresh after the step, so factors never compound. Reading the factor costs one host sync
    per step (an lr is a Python number)."""

    def __init__(self, config: ModalityLRConfig) -> None:
        super().__init__(config.task, "modality_lr")
        self.config = config
        self.average: Tensor | None = None
        self._seen: Tensor | None = None
        self.last_factors: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer: "Trainer") -> None:
        read = self.read_scores(trainer)
        if read is None:
            return
        scores, valid = read
        if self.average is None:
            self.average = torch.where(valid, scores, torch.zeros_like(scores))
            self._seen = valid.clone()
        else:
            momentum = self.config.momentum
            self.average = self.average.to(scores.device)
            blended = momentum * self.average + (1 - momentum) * scores
            # a modality seen for the first time starts its average at its score
            blended = torch.where(self._seen, blended, scores)
            self.average = torch.where(valid, blended, self.average)
            self._seen = self._seen.to(valid.device) | valid
        factors = balanced_lr_factors(self.average, self._seen, self.config).tolist()
        self.last_factors = dict(zip(self.encoders, factors))
        for group in trainer.optimizer.param_groups:
            encoder = _encoder_of_group(group.get("name", ""))
            if encoder in self.last_factors:
                group["lr"] = group["lr"] * self.last_factors[encoder]

    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {}
        return {"average": self.average.cpu(), "seen": self._seen.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.average, self._seen = state["average"], state["seen"]


def _encoder_of_group(name: str) -> str | None:
    """``encoders.<name>`` and ``encoders.<name>.no_decay`` -> ``<name>``."""
    if not name.startswith("encoders."):
        return None
    rest = name[len("encoders.") :]
    return rest[: -len(".no_decay")] if rest.endswith(".no_decay") else rest


def build_balance_callbacks(trainer_config: Any) -> list[Callback]:
    """The callbacks that ``trainer.gradient_modulation`` / ``trainer.modality_lr`` /
    ``trainer.modality_diagnostics`` ask for."""
    from mmfuse.balance.diagnostics import ModalityDiagnostics

    callbacks: list[Callback] = []
    if getattr(trainer_config, "gradient_modulation", None) is not None:
        callbacks.append(GradientModulation(trainer_config.gradient_modulation))
    if getattr(trainer_config, "modality_lr", None) is not None:
        callbacks.append(ModalityBalancedLR(trainer_config.modality_lr))
    if getattr(trainer_config, "modality_diagnostics", True):
        callbacks.append(ModalityDiagnostics())
    return callbacks
