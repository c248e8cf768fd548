"""The cases of the FSDP tests, run one after another in ONE torchrun launch of 2 gloo processes
(process start-up dominates the cost, so the cases share it)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.engine.fsdp_matrix OUT CASE...

Each case trains the tiny fused model of ``tests/engine/tiny.py`` with the Trainer and saves
``OUT/<case>-rank<r>.pt``: the full weights (gathered on rank 0), the step, the logged losses and
the metrics; ``test_fsdp.py`` compares them. A case named ``ddp-<x>`` is case ``<x>`` trained with
``trainer.strategy: ddp`` (the reference).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from mmfuse.artifact import save
from mmfuse.chain_config import InitFromConfig
from mmfuse.engine.callbacks import Callback
from mmfuse.engine.trainer import Trainer
from mmfuse.weight_transfer import InitFrom
from tests.engine.ddp_matrix import NO_DROPOUT, QUIET, LoggedLosses, RowsCollate
from tests.engine.stop_after import StopAfter
from tests.engine.torchrun_cases import run_cases
from tests.engine.tiny import INPUT_DIM, SyntheticRows, tiny_model, tiny_recipe

EVERY_UNIT = {"wrap": ["encoders", "encoder_layers", "fusion"]}

#: case -> (recipe sections without the strategy); ``batch_size`` is per process
CASES: dict[str, dict[str, Any]] = {
    # every unit sharded separately; validation after each epoch (5 + 4 rows: uneven across ranks)
    "plain": {"fusion": NO_DROPOUT, "trainer": {"fsdp": EVERY_UNIT}},
    # accumulation (reduce-scatter on the last micro-batch only) and DTensor-aware clipping
    "accumulate_clip": {"fusion": NO_DROPOUT, "trainer": {"grad_accum_steps": 2, "clip_grad_norm": 0.05}},
    # dropout: each rank's RNG stream must be restored on resume
    "resume": {"trainer": {"fsdp": {"wrap": ["encoders"], "reshard_after_forward": False}}},
    # a best checkpoint restored at the end (val loss rises with a large lr), the model saved
    "best": {"fusion": NO_DROPOUT, "optimizer": {"lr": 0.3},
             "trainer": {"epochs": 3, "eval_every_steps": 2, "restore_best": True}},
    # the same run stopped by SIGTERM on rank 1 alone (agreed at the next log step), then resumed
    "resume_signal": {"trainer": {"fsdp": {"wrap": ["encoders"], "reshard_after_forward": False}}},
    # evaluated before the first training step (a resume with a pending validation does that):
    # the first forward then runs inside the evaluation's gathered parameters
    "evaluate_first": {"fusion": NO_DROPOUT, "trainer": {"fsdp": EVERY_UNIT}},
    # init_from the model folder `best` saved (a chain's next stage): fusion and heads start fresh
    "init_from": {"fusion": NO_DROPOUT},
    # BatchNorm in an encoder whose modality some rows lack: rank 0's first batch has none of it
    # (the encoder must still forward there, without touching the statistics), others some
    "absent_batchnorm": {"fusion": NO_DROPOUT, "data": {"shuffle": False},
                         "trainer": {"fsdp": {"wrap": ["encoders", "fusion"]}}},
    # bf16 parameters in forward / backward, fp32 reduction, and autocast on top
    "bf16": {"fusion": NO_DROPOUT, "trainer": {"precision": "bf16",
                                               "fsdp": {"mixed_precision": {"param_dtype": "bf16", "reduce_dtype": "fp32"}}}},
}
REFERENCES = ("plain", "accumulate_clip", "best", "init_from", "absent_batchnorm")
#: rows without the ``extra`` modality in ``absent_batchnorm`` (unshuffled, rank r reads rows r, r+2, ...:
#: rank 0's first batch is rows 0, 2, 4, 6, all absent; rank 1's first batch has all four)
ABSENT_EXTRA = {0, 2, 4, 6, 9, 13, 20}
HANG_AFTER_S = 300


def write_recipe(trainer: Trainer, run_dir: Path) -> None:
    """``recipe.yaml`` in the run folder, as ``mmfuse train`` writes it (mmfuse.load reads it)."""
    if trainer.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(trainer.recipe.to_dict(), sort_keys=False), encoding="utf-8")


def recipe_of(case: str):
    strategy, name = ("ddp", case[4:]) if case.startswith("ddp-") else ("fsdp", case)
    sections = {key: dict(value) for key, value in CASES[name].items()}
    trainer = {**QUIET, "epochs": 2, "log_every_steps": 2, **sections.pop("trainer", {}), "strategy": strategy}
    if strategy == "ddp":
        trainer.pop("fsdp", None)
    data = {"batch_size": 4, "eval_batch_size": 4, **sections.pop("data", {})}
    return tiny_recipe(data=data, trainer=trainer, **sections)


class IndexedRows(SyntheticRows):
    """SyntheticRows whose rows carry their index (to mark some of them absent)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**super().__getitem__(index), "index": index}


class SomeRowsLackExtra(RowsCollate):
    """The rows of :data:`ABSENT_EXTRA` without the ``extra`` modality (its present mask False)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(rows)
        batch["present"]["extra"] = torch.tensor([row["index"] not in ABSENT_EXTRA for row in rows])
        return batch


def with_batchnorm(model):
    """The ``extra`` encoder normalises its input with BatchNorm (its ``norm`` slot; Identity by default)."""
    model.encoders["extra"].norm = torch.nn.BatchNorm1d(INPUT_DIM)
    return model


def fit(case: str, run_dir: Path, callbacks=(), resume=None, evaluate_first=False) -> tuple[Trainer, Any, LoggedLosses]:
    recipe = recipe_of(case)
    model = tiny_model(recipe)
    rows, val_rows, collate = SyntheticRows(32), SyntheticRows(9, seed=1), RowsCollate(model)
    if case.endswith("absent_batchnorm"):
        model, collate = with_batchnorm(model), SomeRowsLackExtra(model)
        rows, val_rows = IndexedRows(32), IndexedRows(9, seed=1)
    logged = LoggedLosses()
    trainer = Trainer.from_recipe(
        recipe, model, rows, collate, val_dataset=val_rows,
        run_dir=run_dir, callbacks=[logged, *callbacks],
    )
    write_recipe(trainer, run_dir)
    if evaluate_first:
        trainer.evaluate(trainer.val_dataset, prefix="before")
    return trainer, trainer.fit(resume=resume), logged


def summary(trainer: Trainer, result, logged: LoggedLosses) -> dict[str, Any]:
    whole = trainer.full_model()  # gathered on rank 0 under FSDP; a collective
    return {
        "weights": {k: v.detach().cpu().clone() for k, v in whole.state_dict().items()} if whole is not None else {},
        "step": result.global_step,
        "restored_step": result.restored_step,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "logged": logged.losses,
    }


class SigtermOnRank1(Callback):
    """SIGTERM to rank 1's own process after step 5; the ranks agree to stop at step 6 (a log step)."""

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.global_step == 5 and trainer.context.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def run_case(case: str, out: Path) -> dict[str, Any]:
    if case == "resume":
        full = summary(*fit(case, out / "resume-full"))
        fit(case, out / "resume-cut", callbacks=[StopAfter(5)])  # mid-epoch 2: a sharded checkpoint at step 5
        resumed = summary(*fit(case, out / "resume-cut", resume=out / "resume-cut"))
        return {**resumed, "uninterrupted": full["weights"]}
    if case == "resume_signal":
        _, stopped, _ = fit(case, out / case, callbacks=[SigtermOnRank1()])
        resumed = summary(*fit(case, out / case, resume=out / case))
        return {**resumed, "stopped": {"step": stopped.global_step, "reason": stopped.stop_reason}}
    if case.endswith("init_from"):  # after `best` in the launch
        init = InitFrom(InitFromConfig(source=str(out / "best" / "model"), map={"encoders.feats": "encoders.feats", "encoders.extra": "encoders.extra"}))
        return summary(*fit(case, out / case, callbacks=[init]))
    trainer, result, logged = fit(case, out / case, evaluate_first=case == "evaluate_first")
    row = summary(trainer, result, logged)
    if case == "best":
        whole = trainer.full_model()
        if whole is not None:
            save(whole, out / "best" / "model", trainer.recipe)
        trainer.context.barrier()
    return row


if __name__ == "__main__":
    faulthandler.dump_traceback_later(HANG_AFTER_S, exit=True)  # a hang prints each rank's stack, then ends
    run_cases(sys.argv[1], sys.argv[2:], run_case)
