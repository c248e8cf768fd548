"""The training loop: ONE optimizer over a FusedModel, read top to bottom.

Interface::

    from mmfuse.engine import Trainer, TrainerConfig
    trainer = Trainer(model, TrainerConfig(epochs=3), train_dataset, collate, val_dataset=val,
                      data=DataConfig(batch_size=32), optimizer=OptimizerConfig(lr=1e-3), run_dir=...)
    trainer = Trainer.from_recipe(recipe, model, train_dataset, collate, val_dataset=val, run_dir=...)
    result: FitResult = trainer.fit(resume=None | Path)
    metrics: dict[str, float] = trainer.evaluate(dataset, prefix="test")

The loop: ``fit`` -> one ``_train_epoch`` per epoch -> one ``train_step`` per optimizer step
(forward, loss, backward of each micro-batch, then clip and step). Stages apply before a step,
through ``_apply_due_stages`` alone, and ``train_step`` reads the current (possibly re-wrapped)
DDP module every step. How the processes share the model (DDP, or FSDP's shards) is the
:class:`~mmfuse.engine.strategy.Strategy`'s business (``trainer.strategy``). Everything a
checkpoint holds lives in one :class:`TrainState`.

Elsewhere: the loss module and empty batches in :mod:`~mmfuse.engine.step`, evaluation in
:mod:`~mmfuse.engine.evaluation`, loss bookkeeping between logs in :mod:`~mmfuse.engine.window`,
samplers in :mod:`~mmfuse.engine.loading`, resume checks in :mod:`~mmfuse.engine.run_settings`,
everything optional (logging, early stopping, best checkpoints, progress) in callbacks.
A non-finite loss never costs a host sync per step: the flag stays on the device and either
drives the fused optimizer's own skip (``found_inf``, as GradScaler does) or is read back at log
intervals.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from mmfuse.data.config import DataConfig
from mmfuse.engine.assembly import autocast_for, build_callbacks, freeze_unread_modules, recipe_callbacks, task_callbacks
from mmfuse.engine.callbacks import Callback, Checkpointing, state_keys
from mmfuse.engine.checkpoint import (
    Checkpoint, find_resumable, read_checkpoint, remove_leftovers,
)
from mmfuse.engine.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from mmfuse.engine.distributed import any_rank_true, gather_objects, init_distributed
from mmfuse.engine.evaluation import EvaluationInterrupted, batches_on_every_rank, evaluate_model, most_batches_on_a_rank
from mmfuse.engine.loading import batches_per_epoch, build_loader, loader_plan_for, move_to_device, start_epoch
from mmfuse.engine.threads import apply_thread_settings
from mmfuse.engine.rng import capture_rng_state, make_deterministic, restore_rank_rng, seed_everything
from mmfuse.engine.run_settings import check_resume_settings, describe_run, translated_position
from mmfuse.engine.schedule import LRSchedule
from mmfuse.engine.signals import StopSignals
from mmfuse.engine.stages import apply_stage, check_stages, stage_is_due
from mmfuse.engine.state import TrainState
from mmfuse.engine.strategy import build_strategy
from mmfuse.engine.step import LossStep, OptimizerStep, batch_rows, trains_batchnorm
from mmfuse.engine.window import LossWindow
from mmfuse.model import FusedModel
from mmfuse.optim import make_optimizer, param_groups
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["Trainer", "FitResult", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and ``trainer.nonfinite_loss`` is ``stop``."""


@dataclass
class FitResult:
    """How a fit ended. ``stop_reason``: completed, max_steps, early_stopping, signal, or a
    reason given to ``request_stop`` by a callback. ``metrics``: the last epoch's row updated
    with the latest evaluation (``val/loss``, ``val/<task>/loss``, ``val/<task>/<metric>``).
    ``restored_step``: the step whose weights the model holds after the fit when the best
    checkpoint was restored (``trainer.restore_best``). ``signal``: SIGTERM / SIGINT when one
    stopped the fit."""

    global_step: int
    epochs_completed: int
    stop_reason: str
    last_checkpoint: Path | None
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    restored_step: int | None = None
    signal: str | None = None


class Trainer:
    """Trains a FusedModel as ``config`` (a :class:`TrainerConfig`) says, on one process or
    many (torchrun). ``data`` sets the loaders (batch size, workers...), ``optimizer`` /
    ``scheduler`` the one optimizer and its lr schedule (every module at the optimizer's lr; a
    recipe can set them per module, see :meth:`from_recipe`). A :class:`~mmfuse.recipe.Recipe`
    in place of ``config`` is the same as :meth:`from_recipe`."""

    def __init__(
        self,
        model: FusedModel,
        config: TrainerConfig | Recipe,
        train_dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        val_dataset: Dataset | None = None,
        run_dir: Path | str = Path("runs/mmfuse-run"),
        callbacks: Sequence[Callback] = (),
        registry: Registry | None = None,
        *,
        data: DataConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        seed: int = 0,
        name: str = "mmfuse-run",
    ) -> None:
        recipe = config if isinstance(config, Recipe) else None
        named: list[Callback] = []
        if recipe is not None:
            config, data, optimizer, scheduler = recipe.trainer, recipe.data, recipe.optimizer, recipe.scheduler
            seed, name = recipe.seed, recipe.name
            named = recipe_callbacks(recipe, registry)
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"Trainer(model, config, ...): config must be a TrainerConfig or a Recipe, not {type(config).__name__}")
        self.recipe = recipe
        self.config = config
        self.data = data or DataConfig()
        self.seed, self.name = seed, name
        self.train_dataset, self.val_dataset, self.collate = train_dataset, val_dataset, collate
        self.run_dir = Path(run_dir)
        self.context = init_distributed(config.device)
        self.device = self.context.device
        self.on_cpu = self.device.type == "cpu"
        self.autocast = autocast_for(config.precision, self.device)
        check_stages(config.stages, model)
        self.unread_modules = freeze_unread_modules(model)
        self.model = model.to(self.device)
        self.strategy = build_strategy(config, self.context)
        self.strategy.shard(self.model)  # FSDP: before the optimizer is built over the (sharded) parameters
        self.loss_step = LossStep(self.model)
        self.wrapped: torch.nn.Module | None = None  # DDP / FSDP's loss step; re-wrapped when a stage unfreezes parameters
        # per-module lr and weight decay come from the recipe when there is one
        self.groups_from: Recipe | OptimizerConfig = recipe or (optimizer or OptimizerConfig())
        self.optimizer = make_optimizer(param_groups(self.model, self.groups_from), optimizer or OptimizerConfig())
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.optimizer_step = OptimizerStep(self.optimizer, self.scaler, config.clip_grad_norm, self.device)
        #: the training DataLoader's workers and why (mmfuse.data.workers; printed at start)
        self.loader_plan = loader_plan_for(train_dataset, self.data)
        self.train_loader = build_loader(
            train_dataset, collate, self.data, train=True,
            rank=self.context.rank, world_size=self.context.world_size, seed=seed, plan=self.loader_plan,
        )
        self.batches_per_epoch = batches_per_epoch(self.train_loader, self.data)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accum_steps)
        total = self.steps_per_epoch * config.epochs
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.schedule = LRSchedule(self.optimizer, scheduler or SchedulerConfig(), self.total_steps)
        self.callbacks = build_callbacks(config, named + list(callbacks) + task_callbacks(model))
        self.signals = StopSignals()
        self.state = TrainState(settings=describe_run(
            seed=seed, data=self.data, world_size=self.context.world_size, grad_accum_steps=config.grad_accum_steps,
            train_rows=len(train_dataset), recipe=recipe, optimizer=optimizer, scheduler=scheduler,  # type: ignore[arg-type]
        ))
        self.should_stop = False
        self.stop_reason = "completed"
        self._window = LossWindow(self.device)
        self._trains_batchnorm = False
        self._last_saved: tuple[int, int, int] | None = None
        self._last_checkpoint: Path | None = None

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        model: FusedModel,
        train_dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        val_dataset: Dataset | None = None,
        run_dir: Path | str = Path("runs/mmfuse-run"),
        callbacks: Sequence[Callback] = (),
        registry: Registry | None = None,
    ) -> "Trainer":
        """A Trainer set up by the recipe's ``trainer``, ``data``, ``optimizer`` (with each
        module's own lr / weight decay), ``scheduler``, ``seed`` and ``callbacks`` sections."""
        return cls(model, recipe, train_dataset, collate, val_dataset, run_dir, callbacks, registry)

    # ------------------------------------------------------------------ what callbacks read

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def batch_in_epoch(self) -> int:
        return self.state.batch_in_epoch

    @property
    def nonfinite_steps(self) -> int:
        return self.state.nonfinite_steps

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def steps_done_in_epoch(self) -> int:
        return math.ceil(self.state.batch_in_epoch / self.config.grad_accum_steps)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def log(self, message: str) -> None:
        """Print a line on rank 0."""
        if self.is_main:
            print(message, flush=True)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (callbacks call this; the fit ends with a checkpoint)."""
        self.should_stop = True
        self.stop_reason = reason

    # ------------------------------------------------------------------ fit

    def fit(self, resume: Path | str | None = None, resume_force: bool = False) -> FitResult:
        """Train until ``trainer.epochs`` / ``max_steps``, early stopping, a stop request or a
        signal; then (``trainer.restore_best``) load the best checkpoint's weights.
        ``resume_force``: resume even when settings that make resuming exact changed."""
        self._start(resume, resume_force)
        self.signals.install()
        try:
            self._call("on_fit_start")
            if self.state.eval_pending:
                self._validate()
            while self.state.epoch < self.config.epochs and not self.should_stop:
                self._train_epoch()
            if self.stop_reason == "max_steps" and self.val_dataset is not None and self.state.last_eval_step != self.global_step:
                self._validate()  # max_steps ended the fit mid-epoch: the result still reports its metrics
        except EvaluationInterrupted:
            self.state.eval_pending = True
            self.request_stop("signal")
        except BaseException as exc:
            self._call("on_exception", exc)
            raise
        finally:
            self.signals.restore()
        last = self.save_checkpoint()
        restored = self._restore_best(last)
        result = self._result(last, restored)
        self._call("on_fit_end", result)
        self.context.barrier()
        return result

    def _start(self, resume: Path | str | None, resume_force: bool) -> None:
        seed_everything(self.seed + self.context.rank)
        apply_thread_settings(self.config, self.loader_plan.num_workers, self.log)
        if self.config.deterministic:
            make_deterministic()
        if self.is_main:
            for leftover in remove_leftovers(self.run_dir):
                self.log(f"removed {leftover}, left by an interrupted write")
        if resume is not None:
            self._restore(find_resumable(Path(resume)), resume_force)
        self._apply_due_stages(wrap=False)
        self._wrap()
        for name in self.unread_modules:
            self.log(f"{name}: no task reads it, so it is not trained")

    def _train_epoch(self) -> None:
        state, config = self.state, self.config
        start_epoch(self.train_loader, state.epoch, state.batch_in_epoch)
        self._call("on_train_epoch_start")
        self.model.train()
        self._trains_batchnorm = trains_batchnorm(self.model)
        batches = iter(self.train_loader)
        while state.batch_in_epoch < self.batches_per_epoch:
            self._apply_due_stages()
            in_step = min(config.grad_accum_steps, self.batches_per_epoch - state.batch_in_epoch)
            loss = self.train_step(itertools.islice(batches, in_step), in_step)
            state.global_step += 1
            self._call("on_train_batch_end", loss)
            if config.max_steps and state.global_step >= config.max_steps:
                self.request_stop("max_steps")
            at_log = state.global_step % config.log_every_steps == 0
            if at_log:
                self._flush_window()
            if self.val_dataset is not None and config.eval_every_steps and state.global_step % config.eval_every_steps == 0:
                self._validate()
            if self._stop_now(at_log):
                break
        self._flush_window(log=False)
        if state.batch_in_epoch >= self.batches_per_epoch:
            self._end_epoch()

    def train_step(self, batches: Iterable[dict[str, Any]], in_step: int) -> torch.Tensor:
        """One optimizer step over ``in_step`` micro-batches: forward, loss and backward of each
        (its loss divided by ``in_step``, so a short last step of an epoch weighs its rows like a
        full one), then clip and step. Return the step's mean loss (a detached device tensor)."""
        forward = self.wrapped or self.loss_step  # read every step: a stage may have re-wrapped it
        window = self._window
        bad: bool | torch.Tensor | None = None
        losses: list[torch.Tensor] = []
        for index, batch in enumerate(batches):
            self.state.batch_in_epoch += 1
            rows = self._usable_rows(batch)
            if rows:
                self._call("on_train_batch_start", batch)
                if not self.on_cpu:  # the loader's batches are on the CPU
                    batch = move_to_device(batch, self.device)
            elif self.wrapped is None:
                window.add_empty()  # nothing to learn from, nothing to synchronise
                continue
            syncs = index == in_step - 1 or self.wrapped is None  # gradients are reduced on the last micro-batch only
            with contextlib.nullcontext() if syncs else self.strategy.without_gradient_sync(self.wrapped):  # type: ignore[arg-type]
                with self.autocast():
                    loss = forward(batch if rows else None)
                self.scaler.scale(loss / in_step if in_step > 1 else loss).backward()
            if not rows:
                window.add_empty()
                continue
            losses.append(loss.detach().float())
            flag = window.add_loss(losses[-1])
            bad = flag if bad is None else bad | flag
        bad = window.no_flag() if bad is None else bad
        if self.wrapped is not None:
            # gradients are averaged over ranks, so one rank's NaN poisons every rank's update:
            # all ranks skip together (one scalar collective)
            bad = any_rank_true(bad, self.context)
            self.optimizer_step(bad, before=lambda: self._call("on_before_optimizer_step"))
        elif losses:
            self.optimizer_step(bad, before=lambda: self._call("on_before_optimizer_step"))
        else:
            # no data in the whole step: no gradients, so no update (Adam's moments and weight
            # decay would still move the weights)
            self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        window.add_step(bad)
        if not losses:
            return torch.zeros((), device=self.device)
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    def _usable_rows(self, batch: dict[str, Any]) -> int:
        """Rows to train on in a micro-batch: 0 when every row was skipped, or when it has one row
        and the model trains BatchNorm layers (which cannot normalise one row; it is dropped and
        counted)."""
        self._window.skipped += int(batch.pop("skipped", 0))
        rows = batch_rows(batch)
        if rows == 1 and self._trains_batchnorm:
            self._window.dropped += 1
            return 0
        return rows

    def _flush_window(self, log: bool = True) -> None:
        """Read the loss window back (the only host sync of the training loop), summed over ranks."""
        summary = self._window.flush(self.context)
        if summary is None:
            return
        state = self.state
        state.epoch_skipped += summary.skipped
        state.epoch_dropped_single_rows += summary.dropped
        state.epoch_loss_sum += summary.loss_sum
        state.epoch_loss_count += summary.good
        nonfinite = summary.nonfinite_steps
        if nonfinite:
            if self.config.nonfinite_loss == "stop":
                raise NonFiniteLossError(
                    f"the loss was NaN/inf at {nonfinite} step(s) up to step {state.global_step} (epoch {state.epoch + 1}); "
                    "trainer.nonfinite_loss=stop. Those updates were not applied; the last checkpoint is intact. "
                    "Lower optimizer.lr, set trainer.clip_grad_norm, or use trainer.nonfinite_loss=skip_step."
                )
            state.nonfinite_steps += nonfinite
            self.log(f"skipped {nonfinite} optimizer step(s) with a non-finite loss (up to step {state.global_step})")
        if log and summary.batches:
            metrics = {
                "step": float(state.global_step),
                "epoch": float(state.epoch),
                "train/loss": summary.mean_loss,
                "lr": self.schedule.current_lr(),
                "samples_per_sec": summary.batches * self.data.batch_size / summary.seconds,
            }
            self._call("on_log", metrics)

    def _stop_now(self, at_log: bool) -> bool:
        """Whether to leave the epoch loop. Signals are agreed across ranks at log steps only,
        so DDP costs one tiny collective per log interval, not per step."""
        signalled = self.signals.received is not None
        if self.context.is_distributed:
            signalled = any_rank_true(signalled, self.context) if at_log else False
        if signalled and self.stop_reason != "signal":
            self.log(f"received {self.signals.name or 'a stop signal'}: checkpointing at step {self.global_step}")
            self.request_stop("signal")
        return self.should_stop

    def _end_epoch(self) -> None:
        state = self.state
        if self.val_dataset is not None and state.last_eval_step != state.global_step:
            self._validate()
        row = {
            "epoch": state.epoch + 1,
            "step": state.global_step,
            "train/loss": state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else float("nan"),
            "train/skipped": state.epoch_skipped,
            "lr": self.schedule.current_lr(),
            **state.last_val_metrics,
        }
        if state.epoch_skipped:
            self.log(f"epoch {state.epoch + 1}: skipped {state.epoch_skipped} bad sample(s) (data.on_bad_sample=skip)")
        if state.epoch_dropped_single_rows:
            row["train/dropped_one_row_batches"] = state.epoch_dropped_single_rows
            self.log(
                f"epoch {state.epoch + 1}: dropped {state.epoch_dropped_single_rows} one-row batch(es): the model trains "
                "BatchNorm layers, which cannot normalise a single row (data.drop_last=true or another batch size avoids them)"
            )
        state.history.append(row)
        self._call("on_train_epoch_end", row)
        state.start_new_epoch()
        self.save_checkpoint()

    def _apply_due_stages(self, wrap: bool = True) -> None:
        """Apply the stages due before the next step: the only place where stages apply."""
        applied = False
        for index, stage in enumerate(self.config.stages):
            if index not in self.state.stages_applied and stage_is_due(stage, self.state.epoch, self.state.global_step):
                self._apply_stage(index)
                applied = True
        if applied and wrap:
            self._wrap()  # DDP registers gradient hooks only for parameters trainable at wrap time

    def _apply_stage(self, index: int, quiet: bool = False) -> None:
        stage = self.config.stages[index]
        added = apply_stage(self.model, self.groups_from, self.optimizer, stage, index)
        self.state.stages_applied.append(index)
        self.schedule.apply()
        self._trains_batchnorm = self.model.training and trains_batchnorm(self.model)
        if not quiet:
            self.log(f"stage {index}: unfroze {', '.join(stage.unfreeze)} ({added} tensors) at step {self.global_step}")

    def _wrap(self) -> None:
        self.wrapped = self.strategy.wrap(self.loss_step)

    # ------------------------------------------------------------------ evaluation

    def _validate(self) -> None:
        assert self.val_dataset is not None
        try:
            metrics = self.evaluate(self.val_dataset, prefix="val")
        except EvaluationInterrupted:
            raise
        except Exception:
            self._save_before_failed_validation()
            raise
        self.state.last_val_metrics = metrics
        self.state.last_eval_step = self.global_step
        self.state.eval_pending = False
        if metrics.get("val/skipped"):
            self.log(f"step {self.global_step}: validation skipped {int(metrics['val/skipped'])} bad sample(s)")
        self._call("on_validation_end", metrics)

    def _save_before_failed_validation(self) -> None:
        """Validation runs at a step boundary, so the training state is consistent: keep it, so
        that bad validation data (found only when a worker decodes it) costs no training. Under
        DDP the other ranks may be inside a collective, so nothing is attempted there."""
        if self.context.is_distributed:
            return
        self.state.eval_pending = True
        path = self.save_checkpoint()
        self.log(
            f"validation failed at step {self.global_step}; the training state was saved to {path}. "
            f"Fix the problem, then resume with `mmfuse train <recipe> --resume {self.run_dir}` "
            "(the validation runs again first)."
        )

    def evaluate(self, dataset: Dataset, prefix: str = "val") -> dict[str, float]:
        """Loss, each task's loss and each task's metrics over ``dataset`` (split across ranks,
        reduced): ``<prefix>/loss``, ``<prefix>/<task>/loss``, ``<prefix>/<task>/<metric>``,
        ``<prefix>/skipped``. Under DDP every rank must call it."""
        loader = build_loader(
            dataset, self.collate, self.data, train=False,
            rank=self.context.rank, world_size=self.context.world_size, seed=self.seed,
        )
        size, world, batch = len(dataset), self.context.world_size, loader.batch_size or 1  # type: ignore[arg-type]
        common = batches_on_every_rank(size, world, batch)
        with self.evaluating():
            return evaluate_model(
                self.model, loader, prefix=prefix, context=self.context, autocast=self.autocast,
                interrupted=lambda index: self._signal_during_eval(index, common),
                rounds=most_batches_on_a_rank(size, world, batch),
            )

    def evaluating(self) -> Any:
        """A context around code that runs the model on this rank's own share of some data (ranks
        may run different numbers of batches), as :meth:`evaluate` does: under FSDP it gathers the
        parameters once, so the forwards inside run no collective. Enter it on every rank."""
        return self.strategy.evaluating(self.model)

    def _signal_during_eval(self, index: int, common_batches: int) -> bool:
        """Whether a stop signal ends this evaluation (only while a fit runs: afterwards, e.g. in
        the test evaluation, the caller's own handlers are in place)."""
        if not self.signals.active:
            return False
        if self.signals.received is None and not self.context.is_distributed:
            return False
        if not self.context.is_distributed:
            return True
        if index < common_batches and index % self.config.log_every_steps == 0:
            return any_rank_true(self.signals.received is not None, self.context)
        return False

    # ------------------------------------------------------------------ checkpoints

    def full_model(self) -> torch.nn.Module | None:
        """The model with all of its weights, to save or predict with: the model itself, or under
        ``trainer.strategy: fsdp`` an unsharded copy gathered on rank 0 (None on the other ranks).
        A collective under FSDP: call it on every rank."""
        return self.strategy.full_model(self.model)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current position (rank 0 writes, or every rank its shards under FSDP;
        once per position); return its path. A collective under DDP / FSDP (each rank's RNG state
        is gathered): call it on every rank."""
        folder = self.run_dir / "checkpoints"
        state = self.state
        position = (state.epoch, state.batch_in_epoch, state.global_step)
        if position == self._last_saved and self._last_checkpoint is not None:
            return self._last_checkpoint
        self._flush_window(log=False)
        snapshot = replace(
            state,
            schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            callbacks={key: callback.state_dict() for key, callback in zip(state_keys(self.callbacks), self.callbacks)},
            rng=gather_objects(capture_rng_state(), self.context),
        )
        meta = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "recipe": self.name}
        path = self.strategy.save_checkpoint(folder, self.model, self.optimizer, snapshot, meta)
        self._last_saved, self._last_checkpoint = position, path
        self._call("on_checkpoint", path)
        return path

    def _restore(self, checkpoint: Checkpoint, force: bool) -> None:
        saved = TrainState.from_dict(checkpoint.state)
        translate = check_resume_settings(saved.settings, self.state.settings, force=force, where=str(checkpoint.path))
        self.strategy.load_weights(checkpoint, self.model)
        for index in saved.stages_applied:
            self._apply_stage(index, quiet=True)
        self.strategy.load_optimizer(checkpoint, saved, self.model, self.optimizer)
        self.schedule.load_state_dict(saved.schedule)
        if saved.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved.scaler)
        for key, callback in zip(state_keys(self.callbacks), self.callbacks):
            if saved.callbacks.get(key) is not None:
                callback.load_state_dict(saved.callbacks[key])
        if not restore_rank_rng(saved.rng, self.context.rank, self.context.world_size, self.seed + 1_000_003 * saved.global_step):
            self.log(f"the checkpoint holds {len(saved.rng)} RNG state(s) for {self.context.world_size} process(es): reseeded each rank")
        self.state = replace(saved, settings=self.state.settings, optimizer={}, schedule={}, scaler={}, callbacks={}, rng=[])
        if translate:  # forced, with another batch size or process count: keep the rows already seen
            self.state.batch_in_epoch = translated_position(
                saved.batch_in_epoch, saved.settings, self.state.settings, self.batches_per_epoch
            )
        self._last_saved = (self.state.epoch, self.state.batch_in_epoch, self.state.global_step)
        self._last_checkpoint = checkpoint.path
        self.log(f"resumed from {checkpoint.path} (epoch {self.epoch + 1}, step {self.global_step})")

    def _restore_best(self, last: Path) -> int | None:
        """Load the best checkpoint's weights (``trainer.restore_best``) unless a signal stopped
        the fit; return the step restored, or None."""
        checkpointing = next(c for c in self.callbacks if isinstance(c, Checkpointing))
        if not (self.config.restore_best and checkpointing.best_name) or self.stop_reason == "signal":
            return None
        best = last.parent / checkpointing.best_name
        described = f"{checkpointing.monitor} {checkpointing.best_value:.6g}"
        if best.name == last.name:
            self.log(f"the last weights (step {self.global_step}) are the best ({described}): kept")
            return self.global_step
        checkpoint = read_checkpoint(best)
        self.strategy.load_weights(checkpoint, self.model)
        step = int(checkpoint.meta["step"])
        self.log(f"restored the best weights: step {step} ({described}) from {best}")
        return step

    def _result(self, last: Path, restored: int | None) -> FitResult:
        checkpointing = next(c for c in self.callbacks if isinstance(c, Checkpointing))
        best = last.parent / checkpointing.best_name if checkpointing.best_name else None
        state = self.state
        metrics = {**(state.history[-1] if state.history else {}), **state.last_val_metrics}
        return FitResult(
            global_step=state.global_step,
            epochs_completed=state.epoch,
            stop_reason=self.stop_reason,
            last_checkpoint=last,
            best_checkpoint=best,
            best_metric=checkpointing.best_value,
            metrics=metrics,
            history=list(state.history),
            restored_step=restored,
            signal=self.signals.name or None if self.stop_reason == "signal" else None,
        )
