"""Carry weights from a trained run into a new model, module by module (``init_from``).

The source is a model folder (or a run folder holding one in ``model/``), read with the same
checksummed reader that ``mmfuse.load`` uses, without rebuilding the source model: only tensors
move. ``map`` pairs source prefixes with target prefixes; every weight under a mapped prefix is
accounted for in a :class:`TransferReport` (loaded, missing in the source, left over in the
source, shape mismatch), so nothing is dropped silently. :class:`InitFrom` is the training
callback that applies it once, at the start of a fresh fit (a resumed fit already has its weights).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from mmfuse.chain_config import InitFromConfig
from mmfuse.engine.callbacks import Callback
from mmfuse.peft_prompts import VIRTUAL_TOKENS_MODULE
from mmfuse.recipe import Problem, RecipeError

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["TransferReport", "read_source_weights", "transfer_weights", "InitFrom", "build_init_from", "REPORT_FILE"]

#: written into the run folder: what ``init_from`` loaded and what it could not
REPORT_FILE = "init_from.json"


@dataclass
class TransferReport:
    """Every weight under the mapped prefixes, sorted into what happened to it."""

    source: str
    mapping: dict[str, str]
    loaded: list[str] = field(default_factory=list)  # target keys filled from the source
    missing_in_source: list[str] = field(default_factory=list)  # target keys with no source weight
    unused_in_source: list[str] = field(default_factory=list)  # source keys with no target weight
    shape_mismatches: list[str] = field(default_factory=list)  # "target key: source (..) vs target (..)"
    fresh_modules: list[str] = field(default_factory=list)  # target parts the map does not cover

    @property
    def problems(self) -> list[str]:
        found = []
        for title, items in (
            ("target weights with no source weight", self.missing_in_source),
            ("source weights with no target weight", self.unused_in_source),
            ("shape mismatches", self.shape_mismatches),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                found.append(f"{title} ({len(items)}): {shown}")
        return found

    def summary(self) -> str:
        line = f"init_from {self.source}: loaded {len(self.loaded)} tensors via {self.mapping}"
        if self.fresh_modules:
            line += f"; freshly initialised: {', '.join(self.fresh_modules)}"
        return line + "".join(f"\n  not loaded - {problem}" for problem in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_source_weights(source: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(model folder, its state dict) for a model folder or a run folder; checksum verified."""
    from mmfuse.artifact import WEIGHTS_FILE, ModelFolderError, read_manifest, resolve_model_dir
    from mmfuse.weights import WeightsError, read_state_dict

    model_dir = resolve_model_dir(source)
    info = read_manifest(model_dir).get("weights", {})
    file = model_dir / info.get("file", WEIGHTS_FILE)
    try:
        return model_dir, read_state_dict(file, info.get("sha256"), info.get("aliases"))
    except WeightsError as exc:
        raise ModelFolderError(str(exc)) from exc


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _parts(keys: list[str]) -> list[str]:
    """Top-level parts (``encoders.text``, ``fusion``, ...) of a fused model's state-dict keys."""
    parts: dict[str, None] = {}
    for key in keys:
        head = key.split(".")
        parts[".".join(head[:2]) if head[0] in ("encoders", "tasks") else head[0]] = None
    return list(parts)


def transfer_weights(
    model: nn.Module,
    source_state: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    *,
    source_name: str,
    strict: bool = True,
    where: str = "init_from",
) -> TransferReport:
    """Copy ``source_state`` into ``model`` as ``mapping`` says; return what happened.

    Raises RecipeError (naming ``where``) when a mapped prefix matches nothing, and, with
    ``strict``, when any weight under the map is unmatched or shape-mismatched; then nothing is
    copied."""
    target_state = model.state_dict()
    report = TransferReport(source=source_name, mapping=dict(mapping))
    problems: list[Problem] = []
    for source_prefix, target_prefix in mapping.items():
        if not any(_under(key, source_prefix) for key in source_state):
            problems.append(Problem(f"{where}.map.{source_prefix}", f"the source {source_name} has no weights under "
                                    f"'{source_prefix}'; its modules: {', '.join(_parts(list(source_state)))}"))
        if not any(_under(key, target_prefix) for key in target_state):
            problems.append(Problem(f"{where}.map.{source_prefix}", f"this model has no weights under '{target_prefix}'; "
                                    f"its modules: {', '.join(_parts(list(target_state)))}"))
    if problems:
        raise RecipeError(problems, where)

    pairs: list[tuple[str, str]] = []
    for source_prefix, target_prefix in mapping.items():
        wanted = {
            _in_target(target_prefix + key[len(source_prefix):], target_state): key
            for key in source_state if _under(key, source_prefix)
        }
        for target_key in sorted(wanted):
            source_key = wanted[target_key]
            if target_key not in target_state:
                report.unused_in_source.append(source_key)
            elif tuple(source_state[source_key].shape) != tuple(target_state[target_key].shape):
                report.shape_mismatches.append(
                    f"{target_key}: source {tuple(source_state[source_key].shape)} vs target {tuple(target_state[target_key].shape)}"
                )
            else:
                pairs.append((source_key, target_key))
        mapped = set(wanted)
        report.missing_in_source += sorted(
            key for key in target_state if _under(key, target_prefix) and key not in mapped and not _is_adapter(key)
        )
    covered = list(mapping.values())
    report.fresh_modules = [part for part in _parts(list(target_state)) if not any(_under(part, c) or _under(c, part) for c in covered)]
    if strict and report.problems:
        raise RecipeError(
            [Problem(f"{where}.map", problem + "; fix the map, or set strict: false to load the rest") for problem in report.problems],
            where,
        )
    with torch.no_grad():
        for source_key, target_key in pairs:
            # state_dict() tensors share storage with the parameters and buffers: copy in place,
            # so an optimizer built before the transfer keeps pointing at the same tensors
            _copy_into(target_state[target_key], source_state[source_key])
            report.loaded.append(target_key)
    return report


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)``; a target sharded by FSDP (a DTensor: ``trainer.strategy: fsdp``)
    takes this rank's shard of ``value`` (every rank read the same source, so no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    target.copy_(value)


def _in_target(key: str, target_state: Mapping[str, torch.Tensor]) -> str:
    """``key``, or its place under a peft adapter layer (``q.weight`` -> ``q.base_layer.weight``)
    when the target encoder has adapters: a plain run can initialise a LoRA run."""
    if key in target_state:
        return key
    owner, _, leaf = key.rpartition(".")
    adapted = f"{owner}.base_layer.{leaf}" if owner else key
    return adapted if adapted in target_state else key


def _is_adapter(key: str) -> bool:
    """A peft adapter weight or virtual token: it starts fresh by design, so it is not 'missing in
    the source'."""
    return any(part.startswith(("lora_", "ia3_")) or part == VIRTUAL_TOKENS_MODULE for part in key.split("."))


class InitFrom(Callback):
    """Loads ``init_from`` weights when a fresh fit starts; a resumed fit (whose checkpoint
    records that they were loaded) keeps the checkpoint's weights."""

    def __init__(self, config: InitFromConfig, source: str | Path | None = None) -> None:
        self.config = config
        self.source = Path(source if source is not None else config.source)
        self.applied = False
        self.report: TransferReport | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.applied:
            return
        model_dir, state = read_source_weights(self.source)
        self.report = transfer_weights(
            trainer.model, state, self.config.map, source_name=str(model_dir), strict=self.config.strict
        )
        self.applied = True
        trainer.log(self.report.summary())
        if trainer.is_main:
            trainer.run_dir.mkdir(parents=True, exist_ok=True)
            (trainer.run_dir / REPORT_FILE).write_text(json.dumps(self.report.to_dict(), indent=2), encoding="utf-8")

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "source": str(self.source)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied = bool(state.get("applied", False))


def build_init_from(config: InitFromConfig) -> InitFrom:
    """Builder of the ``mmfuse/init_from`` callback a recipe can name under ``callbacks:``."""
    return InitFrom(config)
