"""Per-modality diagnostics at the end of every multimodal fit: which modality carries each task,
and whether fusion helps.

For each encoder ``m``, over the validation rows that have ``m``:

- ``fused``: the fused model's metric with every modality the rows have;
- ``fused_only``: the fused model's metric with every other modality masked out (absent);
- ``unimodal_head``: the metric of the auxiliary head of ``m`` (when ``unimodal_aux`` is on).

One pass over the validation set (1 + M forwards per batch). The table is printed and written to
``<run_dir>/modalities.json``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import FitResult, Trainer

__all__ = ["MODALITIES_FILE", "ModalityDiagnostics", "only_modality", "modality_report", "format_table"]

MODALITIES_FILE = "modalities.json"


def only_modality(batch: Mapping[str, Any], keep: str) -> dict[str, Any]:
    """The batch with every encoder but ``keep`` marked absent on every row."""
    present = dict(batch.get("present", {}))
    for name, tensors in batch.get("inputs", {}).items():
        if name == keep:
            continue
        size = next(iter(tensors.values())).shape[0]
        device = next(iter(tensors.values())).device
        present[name] = torch.zeros(size, dtype=torch.bool, device=device)
    return {**batch, "present": present}


def _rows_with(batch: Mapping[str, Any], name: str, size: int, device: torch.device) -> Tensor:
    mask = batch.get("present", {}).get(name)
    if name not in batch.get("inputs", {}):
        return torch.zeros(size, dtype=torch.bool, device=device)
    if mask is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    return mask.to(device=device, dtype=torch.bool)


@torch.no_grad()
def modality_report(model: Any, loader: Any, device: torch.device, autocast: Any, context: Any = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader`` as the module docstring says; return plain data."""
    from mmfuse.engine.distributed import all_reduce_sum
    from mmfuse.engine.loading import move_to_device
    from mmfuse.engine.step import batch_rows

    encoders = list(model.encoders)
    was_training = model.training
    model.eval()
    tasks = {name: task for name, task in model.tasks.items() if task.needs_target}
    heads = getattr(model, "unimodal_heads", None)
    kinds = ("fused", "fused_only", "unimodal_head")
    metrics = {
        (kind, task, name): tasks[task].build_metrics().to(device)
        for kind in kinds
        for task in tasks
        for name in encoders
    }
    overall = {task: tasks[task].build_metrics().to(device) for task in tasks}
    counts = torch.zeros(len(encoders) + 1, dtype=torch.float64, device=device)
    skipped: set[str] = set()
    try:
        for batch in loader:
            batch.pop("skipped", None)
            if not batch.get("inputs"):
                continue
            batch = move_to_device(batch, device)
            targets = batch.get("targets", {})
            size = batch_rows(batch)
            with autocast():
                full = model(batch)
            counts[-1] += size
            for task in tasks:
                if isinstance(full[task], Tensor):
                    tasks[task].update_metrics(overall[task], full[task], targets.get(task))
                else:
                    skipped.add(task)
            for index, name in enumerate(encoders):
                rows = _rows_with(batch, name, size, device)
                if not bool(rows.any()):
                    continue
                counts[index] += rows.sum()
                with autocast():
                    alone = model(only_modality(batch, name))
                unimodal = getattr(full, "unimodal", {})
                for task in tasks:
                    if task in skipped:
                        continue
                    target = targets.get(task)
                    chosen = target[rows] if target is not None else None
                    tasks[task].update_metrics(metrics[("fused", task, name)], full[task][rows], chosen)
                    tasks[task].update_metrics(metrics[("fused_only", task, name)], alone[task][rows], chosen)
                    if (task, name) in unimodal:
                        head = heads.heads[task][name]
                        head.update_metrics(
                            metrics[("unimodal_head", task, name)], unimodal[(task, name)].outputs[rows], chosen
                        )
        if context is not None:
            all_reduce_sum(counts, context)
        total = counts.tolist()
        report: dict[str, Any] = {"rows": int(total[-1]), "tasks": {}}
        for task in tasks:
            if task in skipped:
                continue
            entry: dict[str, Any] = {"all_modalities": _values(overall[task]), "modalities": {}}
            for index, name in enumerate(encoders):
                has_head = heads is not None and task in heads.heads and name in heads.heads[task]
                entry["modalities"][name] = {
                    "rows": int(total[index]),
                    "fused": _values(metrics[("fused", task, name)], total[index] > 0),
                    "fused_only": _values(metrics[("fused_only", task, name)], total[index] > 0),
                    "unimodal_head": _values(metrics[("unimodal_head", task, name)], total[index] > 0)
                    if has_head
                    else None,
                }
            report["tasks"][task] = entry
        return report
    finally:
        model.train(was_training)


def _values(collection: Any, updated: bool = True) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # never-updated metrics warn; they are reported as NaN
        values = collection.compute()
    return {key: (float(v) if updated else math.nan) for key, v in values.items() if v.numel() == 1}


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a text table, one block per task (its first metric)."""
    lines: list[str] = []
    for task, entry in report["tasks"].items():
        metric = next(iter(entry["all_modalities"]), None)
        if metric is None:
            continue
        lines.append(f"per-modality {metric} of task '{task}' on the validation rows that have each modality:")
        lines.append(f"  {'modality':<16}{'rows':>7}{'fused':>9}{'fused, only it':>16}{'unimodal head':>15}")
        for name, row in entry["modalities"].items():
            head = row["unimodal_head"][metric] if row["unimodal_head"] is not None else None
            lines.append(
                f"  {name:<16}{row['rows']:>7}{_cell(row['fused'].get(metric)):>9}"
                f"{_cell(row['fused_only'].get(metric)):>16}{_cell(head):>15}"
            )
        lines.append(f"  {'(all rows)':<16}{report['rows']:>7}{_cell(entry['all_modalities'][metric]):>9}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.4f}"


class ModalityDiagnostics(Callback):
    """At the end of a fit with two or more encoders, a task with targets and a validation set:
    print the table and write ``modalities.json`` to the run folder (every rank evaluates; rank 0
    writes). Skipped when the fit was stopped by a signal (the job should end promptly)."""

    def __init__(self) -> None:
        self.report: dict[str, Any] | None = None

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        model = trainer.model
        if trainer.val_dataset is None or len(model.encoders) < 2 or result.stop_reason == "signal":
            return
        if not any(task.needs_target for task in model.tasks.values()):
            return  # nothing to score per modality (e.g. contrastive alignment only)
        from mmfuse.engine.loading import build_loader

        loader = build_loader(
            trainer.val_dataset, trainer.collate, trainer.data, train=False,
            rank=trainer.context.rank, world_size=trainer.context.world_size, seed=trainer.seed,
        )
        context = trainer.context if trainer.context.is_distributed else None
        with trainer.evaluating():  # FSDP: ranks may hold different numbers of batches
            self.report = modality_report(trainer.model, loader, trainer.device, trainer.autocast, context)
        if not trainer.is_main:
            return
        trainer.log(format_table(self.report))
        path = Path(trainer.run_dir) / MODALITIES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.report, indent=2, allow_nan=True), encoding="utf-8")
        os.replace(temporary, path)
