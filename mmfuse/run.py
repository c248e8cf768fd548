"""What ``mmfuse train`` does: recipe -> manifests -> split -> task targets -> FusedModel ->
Trainer -> run folder with the final model.

A run folder holds ``recipe.yaml`` (the resolved recipe: labels learned from the data, data paths
made absolute), ``few_shot.json`` (with ``data.shots_per_class``: the rows kept per class), what
the engine writes (``metrics.csv``, ``checkpoints/``) and ``model/`` (the portable model folder of
:mod:`mmfuse.artifact`).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import ManifestDataset, build_dataset
from mmfuse.data.fitting import fit_preprocessors
from mmfuse.data.shots import ShotsSummary
from mmfuse.data.sources import DataSplits, load_splits, resolve_data_path
from mmfuse.data.targets import fit_task_targets
from mmfuse.model import FusedModel, build_fused_model
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["TrainOutcome", "PreparedRun", "prepare", "train", "new_run_dir", "resolved_recipe"]

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
#: what data.shots_per_class kept (mmfuse.data.shots.ShotsSummary), read by the run report
SHOTS_FILE = "few_shot.json"


@dataclass
class PreparedRun:
    """Everything the Trainer needs, built from a recipe and its data."""

    recipe: Recipe
    model: FusedModel
    collate: BatchCollator
    train: ManifestDataset
    val: ManifestDataset | None = None
    test: ManifestDataset | None = None
    shots: ShotsSummary | None = None


@dataclass
class TrainOutcome:
    """``interrupted``: the signal's name (SIGTERM, SIGINT) when one stopped the fit; ``model_dir``
    is then None unless ``export_on_interrupt`` was set."""

    run_dir: Path
    model_dir: Path | None
    fit: Any
    test_metrics: dict[str, float] = field(default_factory=dict)
    interrupted: str | None = None


def new_run_dir(recipe: Recipe) -> Path:
    """A fresh folder ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (output_dir relative to the cwd).

    Under torchrun every process must pick the same folder: the name then ends with torchrun's
    run id instead of the time."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", recipe.name).strip("-") or "run"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Path(recipe.output_dir) / f"{safe}-{os.environ.get('TORCHELASTIC_RUN_ID', 'ddp')}"
    base = Path(recipe.output_dir) / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data with its data paths absolute, so it works from any folder."""
    raw = recipe.to_dict()
    for key in ("train", "val", "test", "root", "cache_dir"):
        value = raw["data"].get(key)
        if value is not None:
            raw["data"][key] = str(resolve_data_path(recipe, value).resolve())
    return raw


def prepare(recipe: Recipe, registry: Registry | None = None, splits: DataSplits | None = None) -> PreparedRun:
    """Read the data, learn task targets (labels) from the training split, build the model and
    the datasets. Raises DataError on bad data."""
    splits = splits or load_splits(recipe, registry)
    fit_task_targets(recipe, splits.train)
    torch.manual_seed(recipe.seed)  # the model's initial weights follow the recipe's seed
    model = build_fused_model(recipe, registry)
    # one preprocessor per encoder, shared by every split's dataset and the collate function
    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}

    def dataset(manifest, training=False):
        if manifest is None:
            return None
        return build_dataset(manifest, recipe, model, preprocessors=preprocessors, training=training)

    train = dataset(splits.train, training=True)
    fit_preprocessors(recipe, train)  # vocabularies, `auto` statistics: learned from the training split
    return PreparedRun(
        recipe=recipe,
        model=model,
        collate=BatchCollator(preprocessors, dict(model.tasks.items())),
        train=train,
        val=dataset(splits.val),
        test=dataset(splits.test),
        shots=splits.shots,
    )


def train(
    recipe: Recipe,
    *,
    run_dir: Path | None = None,
    resume: Path | None = None,
    registry: Registry | None = None,
    callbacks: Sequence[Any] = (),
    resume_force: bool = False,
    export_on_interrupt: bool = False,
) -> TrainOutcome:
    """Train ``recipe`` into ``run_dir`` (default: a new folder under ``recipe.output_dir``;
    with ``resume``, the resumed run's folder) and save the final model in ``run_dir/model``
    (the best checkpoint's weights when ``trainer.restore_best``). A run stopped by SIGTERM /
    SIGINT keeps its checkpoint but writes no model and runs no test evaluation, unless
    ``export_on_interrupt``."""
    import yaml

    from mmfuse.artifact import save
    from mmfuse.cache.samples import feature_cache_callbacks
    from mmfuse.engine.trainer import Trainer
    from mmfuse.peft_adapters import model_for_saving, trainable_summary
    from mmfuse.profiling.data_wait import DataWaitLogger

    prepared = prepare(recipe, registry)
    run_dir = Path(run_dir or resume or new_run_dir(recipe))
    # the data-wait share is in each epoch's row before the caller's callbacks read it
    callbacks = [DataWaitLogger(), *feature_cache_callbacks(recipe), *callbacks]
    trainer = Trainer.from_recipe(
        recipe, prepared.model, prepared.train, prepared.collate,
        val_dataset=prepared.val, run_dir=run_dir, callbacks=list(callbacks), registry=registry,
    )
    trainer.log(trainable_summary(prepared.model))
    if prepared.shots is not None:
        trainer.log(prepared.shots.describe())
    if trainer.is_main:  # under torchrun, one process writes the run folder's files
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(resolved_recipe(recipe), sort_keys=False), encoding="utf-8")
        if prepared.shots is not None:
            (run_dir / SHOTS_FILE).write_text(json.dumps(prepared.shots.to_dict(), indent=1), encoding="utf-8")
    result = trainer.fit(resume=resume, resume_force=resume_force)
    interrupted = (result.signal or "a signal") if result.stop_reason == "signal" else None
    if interrupted and not export_on_interrupt:
        return TrainOutcome(run_dir=run_dir, model_dir=None, fit=result, interrupted=interrupted)
    test_metrics = trainer.evaluate(prepared.test, prefix="test") if prepared.test is not None else {}
    model_dir = run_dir / MODEL_DIR
    trained = trainer.full_model()  # under FSDP: gathered on rank 0 (a collective)
    if trainer.is_main:
        from mmfuse.balance.unimodal import for_saving

        model_to_save, recipe_to_save = for_saving(trained, recipe)  # aux heads: dropped unless kept
        model_to_save, recipe_to_save = model_for_saving(model_to_save, recipe_to_save)  # merges peft adapters if asked
        save(model_to_save, model_dir, recipe_to_save, registry)
    trainer.context.barrier()
    if trainer.context.is_distributed:
        # the report evaluates the model on rank 0 alone, so it runs outside the process group:
        # a gather (contrastive) or a metric sync (torchmetrics) would wait for the other ranks
        trainer.context.close()
    if trainer.is_main:
        write_report(run_dir, registry, inside_process_group=torch.distributed.is_initialized())
    return TrainOutcome(run_dir=run_dir, model_dir=model_dir, fit=result, test_metrics=test_metrics, interrupted=interrupted)


def write_report(run_dir: Path, registry: Registry | None = None, inside_process_group: bool = False) -> None:
    """``report.html`` for a finished run; a failure to write it is reported, never fatal. Not
    written by one rank of a process group the caller keeps (its evaluation would wait in
    collectives for the other ranks)."""
    if inside_process_group:
        print(f"report: not written inside a running process group; run `mmfuse report {run_dir}`", flush=True)
        return
    from mmfuse.run_report import build_report

    try:
        path = build_report(run_dir, registry=registry)
    except Exception as exc:  # noqa: BLE001 - the model is saved; the report is a convenience
        print(f"warning: report.html not written ({type(exc).__name__}: {exc}); run `mmfuse report {run_dir}`", flush=True)
        return
    print(f"report: {path}", flush=True)
