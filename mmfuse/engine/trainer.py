"""The training loop: ONE optimizer over a FusedModel, read top to bottom.

Interface::

    from mmfuse.engine.trainer import Trainer, FitResult
    trainer = Trainer(
        model,                 # mmfuse.model.FusedModel
        recipe,                # mmfuse.recipe.Recipe (optimizer/scheduler/trainer/data sections)
        train_dataset,         # map-style torch Dataset; items are whatever `collate` accepts
        collate,               # callable(list[item]) -> batch dict (mmfuse/contracts.py BATCH layout)
        val_dataset=None,
        run_dir=Path,          # checkpoints/ and metrics.csv are written here (rank 0 only)
        callbacks=[],          # extra Callback instances (plus those named in recipe.callbacks)
        registry=None,
    )
    result: FitResult = trainer.fit(resume=None | Path)   # resume from a run dir or checkpoint dir
    metrics: dict[str, float] = trainer.evaluate(dataset, prefix="val")

One step: forward under autocast -> weighted task loss -> backward (``no_sync`` on DDP for
accumulation micro-batches) -> clip -> optimizer step -> lr schedule -> ``zero_grad(set_to_none)``.
A batch whose rows were all skipped by the data pipeline is stepped over (under DDP it runs a
zero loss instead, see :mod:`mmfuse.engine.step`); it still counts as a batch of the epoch.
A non-finite loss never costs a host sync per step: the flag stays on the device and either
drives the fused optimizer's own skip (``found_inf``, as GradScaler does) or is read back at log
intervals. Everything optional (logging, early stopping, best checkpoints, progress) is a callback;
evaluation lives in :mod:`mmfuse.engine.evaluation`, loss bookkeeping in :mod:`mmfuse.engine.window`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mmfuse.engine.assembly import autocast_for, build_callbacks
from mmfuse.engine.callbacks import Callback, Checkpointing, state_keys
from mmfuse.engine.checkpoint import Checkpoint, checkpoint_name, find_resumable, load_model_weights, save_checkpoint
from mmfuse.engine.distributed import any_rank_true, init_distributed
from mmfuse.engine.evaluation import EvaluationInterrupted, batches_on_every_rank, evaluate_model
from mmfuse.engine.loading import batches_per_epoch, build_loader, move_to_device, start_epoch
from mmfuse.engine.rng import capture_rng_state, make_deterministic, restore_rng_state, seed_everything
from mmfuse.engine.schedule import LRSchedule
from mmfuse.engine.signals import StopSignals
from mmfuse.engine.stages import apply_stage, check_stages, stage_is_due
from mmfuse.engine.step import LossStep, is_empty_batch
from mmfuse.engine.window import LossWindow
from mmfuse.model import FusedModel
from mmfuse.optim import build_optimizer
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["Trainer", "FitResult", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and ``trainer.nonfinite_loss`` is ``stop``."""


@dataclass
class FitResult:
    """How a fit ended. ``stop_reason``: completed, max_steps, early_stopping, signal, or a
    reason given to ``request_stop`` by a callback. ``metrics``: the last epoch's row updated
    with the latest evaluation (``val/loss``, ``val/<task>/loss``, ``val/<task>/<metric>``)."""

    global_step: int
    epochs_completed: int
    stop_reason: str
    last_checkpoint: Path | None
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains a FusedModel as the recipe's ``optimizer``, ``scheduler``, ``trainer`` and ``data``
    sections say; one process or many (torchrun)."""

    def __init__(
        self,
        model: FusedModel,
        recipe: Recipe,
        train_dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        val_dataset: Dataset | None = None,
        run_dir: Path | str = Path("runs/mmfuse-run"),
        callbacks: Sequence[Callback] = (),
        registry: Registry | None = None,
    ) -> None:
        self.recipe = recipe
        self.config = recipe.trainer
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.collate = collate
        self.run_dir = Path(run_dir)
        self.context = init_distributed(self.config.device)
        self.device = self.context.device
        self.on_cpu = self.device.type == "cpu"
        self.autocast = autocast_for(self.config.precision, self.device)
        check_stages(self.config.stages, model)
        self.model = model.to(self.device)
        self.loss_step = LossStep(self.model)
        self.optimizer = build_optimizer(self.model, recipe)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.config.precision == "fp16")
        # On an accelerator, fused optimizers skip a step on the device when told so (found_inf),
        # without a host sync. On the CPU reading the flag stalls nothing and is cheaper than the
        # found_inf path (which rolls back every group's step counter with extra kernels).
        self.device_side_skip = not self.on_cpu and bool(
            getattr(self.optimizer, "_step_supports_amp_scaling", False)
        )
        self.train_loader = build_loader(
            train_dataset, collate, recipe.data, train=True,
            rank=self.context.rank, world_size=self.context.world_size, seed=recipe.seed,
        )
        self.batches_per_epoch = batches_per_epoch(self.train_loader, recipe.data)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.config.grad_accum_steps)
        total = self.steps_per_epoch * self.config.epochs
        self.total_steps = min(total, self.config.max_steps) if self.config.max_steps else total
        self.schedule = LRSchedule(self.optimizer, recipe.scheduler, self.total_steps)
        self.callbacks = build_callbacks(recipe, list(callbacks), registry)
        self.ddp: DistributedDataParallel | None = None
        self.signals = StopSignals()
        # position and bookkeeping: everything here goes into a checkpoint
        self.epoch = 0
        self.global_step = 0
        self.batch_in_epoch = 0
        self.stages_applied: list[int] = []
        self.should_stop = False
        self.stop_reason = "completed"
        self.last_eval_step = -1
        self.eval_pending = False
        self.last_val_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._epoch_loss = [0.0, 0]  # host-side sum and count, filled at each log flush
        self._epoch_skipped = 0
        self.nonfinite_steps = 0  # optimizer steps skipped for a non-finite loss, over the whole fit
        self._window = LossWindow(self.device)
        self._last_saved: tuple[int, int, int] | None = None
        self._last_checkpoint: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def steps_done_in_epoch(self) -> int:
        return math.ceil(self.batch_in_epoch / self.config.grad_accum_steps)

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

    def fit(self, resume: Path | str | None = None) -> FitResult:
        """Train until ``trainer.epochs`` / ``max_steps``, early stopping, a stop request or a signal."""
        seed_everything(self.recipe.seed + self.context.rank)
        if self.config.deterministic:
            make_deterministic()
        if resume is not None:
            self._restore(find_resumable(Path(resume)))
        self._apply_due_stages()
        self._wrap_ddp()
        self.signals.install()
        try:
            self._call("on_fit_start")
            if self.eval_pending:
                self._validate()
            while self.epoch < self.config.epochs and not self.should_stop:
                self._train_epoch()
            if self.stop_reason == "max_steps" and self.val_dataset is not None and self.last_eval_step != self.global_step:
                self._validate()  # max_steps ended the fit mid-epoch: the result still reports its metrics
        except EvaluationInterrupted:
            self.eval_pending = True
            self.request_stop("signal")
        except BaseException as exc:
            self._call("on_exception", exc)
            raise
        finally:
            self.signals.restore()
        last = self.save_checkpoint()
        result = self._result(last)
        self._call("on_fit_end", result)
        self.context.barrier()
        return result

    def _train_epoch(self) -> None:
        config = self.config
        accum = config.grad_accum_steps
        start_epoch(self.train_loader, self.epoch, self.batch_in_epoch)
        self._call("on_train_epoch_start")
        self.model.train()
        forward = self.ddp or self.loss_step
        window = self._window
        step_bad: bool | torch.Tensor | None = None
        step_has_data = False
        for batch in self.train_loader:
            self._epoch_skipped += int(batch.pop("skipped", 0))
            self.batch_in_epoch += 1
            steps_now = self.batch_in_epoch % accum == 0 or self.batch_in_epoch == self.batches_per_epoch
            if is_empty_batch(batch) and self.ddp is None:
                window.add_empty()  # every row was bad: nothing to learn from, nothing to sync
                loss = torch.zeros((), device=self.device)
            else:
                if not self.on_cpu:  # the loader's batches are already on the CPU
                    batch = move_to_device(batch, self.device)
                loss = self._forward_backward(forward, batch, steps_now)
                if is_empty_batch(batch):
                    window.add_empty()
                else:
                    step_has_data = True
                    bad = window.add_loss(loss)
                    step_bad = bad if step_bad is None else step_bad | bad
            if not steps_now:
                continue

            step_bad = step_bad if step_bad is not None else window.no_flag()
            # one process with no data in the whole step: no gradients, so no update (Adam's
            # moments and weight decay would still move the weights); under DDP the ranks must agree
            if self.ddp is not None:
                # gradients are averaged over ranks, so one rank's NaN poisons every rank's update:
                # all ranks must skip together (one scalar collective)
                step_bad = any_rank_true(step_bad, self.context)
                self._optimizer_step(step_bad)
            elif step_has_data:
                self._optimizer_step(step_bad)
            else:
                self.optimizer.zero_grad(set_to_none=True)
            self.schedule.step()
            window.add_step(step_bad)
            step_bad, step_has_data = None, False
            self.global_step += 1
            self._call("on_train_batch_end", loss)
            if config.max_steps and self.global_step >= config.max_steps:
                self.request_stop("max_steps")
            at_log = self.global_step % config.log_every_steps == 0
            if at_log:
                self._flush_window()
            if self.val_dataset is not None and config.eval_every_steps and self.global_step % config.eval_every_steps == 0:
                self._validate()
            self._apply_due_stages()
            if self._stop_now(at_log):
                break
        self._flush_window(log=False)
        if self.batch_in_epoch >= self.batches_per_epoch:
            self._end_epoch()

    def _forward_backward(self, forward: Callable[[dict[str, Any]], torch.Tensor], batch: dict[str, Any], steps_now: bool) -> torch.Tensor:
        """Loss and gradients of one micro-batch (DDP syncs gradients only on a stepping one)."""
        accum = self.config.grad_accum_steps
        sync = contextlib.nullcontext() if (steps_now or self.ddp is None) else self.ddp.no_sync()
        with sync:
            with self.autocast():
                loss = forward(batch)
            self.scaler.scale(loss / accum if accum > 1 else loss).backward()
        return loss.detach().float()

    def _optimizer_step(self, bad: bool | torch.Tensor) -> None:
        """Clip, then step (skipping a non-finite step on the device where possible), then zero."""
        optimizer = self.optimizer
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm, foreach=True)
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # GradScaler itself skips steps whose gradients are not finite
            self.scaler.update()
        elif self.device_side_skip:
            optimizer.found_inf = bad.float()  # type: ignore[attr-defined,union-attr]
            optimizer.step()
            del optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(bad):  # CPU, or no fused kernel on an accelerator (one sync there)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _flush_window(self, log: bool = True) -> None:
        """Read the device-side counters back: the only host sync of the training loop."""
        summary = self._window.flush()
        if summary is None:
            return
        self._epoch_loss[0] += summary.loss_sum
        self._epoch_loss[1] += summary.good
        nonfinite = summary.nonfinite_steps
        if nonfinite:
            if self.config.nonfinite_loss == "stop":
                raise NonFiniteLossError(
                    f"the loss was NaN/inf at {nonfinite} step(s) up to step {self.global_step} (epoch {self.epoch + 1}); "
                    "trainer.nonfinite_loss=stop. Those updates were not applied; the last checkpoint is intact. "
                    "Lower optimizer.lr, set trainer.clip_grad_norm, or use trainer.nonfinite_loss=skip_step."
                )
            self.nonfinite_steps += nonfinite
            self.log(f"skipped {nonfinite} optimizer step(s) with a non-finite loss (up to step {self.global_step})")
        if log:
            samples = summary.batches * self.recipe.data.batch_size * self.context.world_size
            metrics = {
                "step": float(self.global_step),
                "epoch": float(self.epoch),
                "train/loss": summary.mean_loss,
                "lr": self.schedule.current_lr(),
                "samples_per_sec": samples / summary.seconds,
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
        if self.val_dataset is not None and self.last_eval_step != self.global_step:
            self._validate()
        loss_sum, count = self._epoch_loss
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train/loss": loss_sum / count if count else float("nan"),
            "train/skipped": self._epoch_skipped,
            "lr": self.schedule.current_lr(),
            **self.last_val_metrics,
        }
        if self._epoch_skipped:
            self.log(f"epoch {self.epoch + 1}: skipped {self._epoch_skipped} bad sample(s) (data.on_bad_sample=skip)")
        self.history.append(row)
        self._call("on_train_epoch_end", row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_loss = [0.0, 0]
        self._epoch_skipped = 0
        self.save_checkpoint()

    def _apply_due_stages(self) -> None:
        for index, stage in enumerate(self.config.stages):
            if index not in self.stages_applied and stage_is_due(stage, self.epoch, self.global_step):
                added = apply_stage(self.model, self.recipe, self.optimizer, stage, index)
                self.stages_applied.append(index)
                self.schedule.apply()
                self.log(f"stage {index}: unfroze {', '.join(stage.unfreeze)} ({added} tensors) at step {self.global_step}")
                if self.ddp is not None:
                    self._wrap_ddp()  # DDP registers gradient hooks only for parameters trainable at wrap time

    def _wrap_ddp(self) -> None:
        if not self.context.is_distributed:
            return
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(
            self.loss_step, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters
        )

    # ------------------------------------------------------------------ evaluation

    def _validate(self) -> None:
        assert self.val_dataset is not None
        try:
            self.last_val_metrics = self.evaluate(self.val_dataset, prefix="val")
        except EvaluationInterrupted:
            raise
        except Exception:
            self._save_before_failed_validation()
            raise
        self.last_eval_step = self.global_step
        self.eval_pending = False
        self._call("on_validation_end", self.last_val_metrics)

    def _save_before_failed_validation(self) -> None:
        """Validation runs at a step boundary, so the training state is consistent: keep it, so
        that bad validation data (found only when a worker decodes it) costs no training. Under
        DDP the other ranks may be inside a collective, so nothing is attempted there."""
        if self.context.is_distributed:
            return
        self.eval_pending = True
        path = self.save_checkpoint()
        self.log(
            f"validation failed at step {self.global_step}; the training state was saved to {path}. "
            f"Fix the problem, then resume with `mmfuse train <recipe> --resume {self.run_dir}` "
            "(the validation runs again first)."
        )

    def evaluate(self, dataset: Dataset, prefix: str = "val") -> dict[str, float]:
        """Loss, each task's loss and each task's metrics over ``dataset`` (split across ranks,
        reduced): ``<prefix>/loss``, ``<prefix>/<task>/loss``, ``<prefix>/<task>/<metric>``."""
        loader = build_loader(
            dataset, self.collate, self.recipe.data, train=False,
            rank=self.context.rank, world_size=self.context.world_size, seed=self.recipe.seed,
        )
        common = batches_on_every_rank(len(dataset), self.context.world_size, loader.batch_size or 1)  # type: ignore[arg-type]
        return evaluate_model(
            self.model, loader, prefix=prefix, context=self.context, autocast=self.autocast,
            interrupted=lambda index: self._signal_during_eval(index, common),
        )

    def _signal_during_eval(self, index: int, common_batches: int) -> bool:
        if self.signals.received is None and not self.context.is_distributed:
            return False
        if not self.context.is_distributed:
            return True
        if index < common_batches and index % self.config.log_every_steps == 0:
            return any_rank_true(self.signals.received is not None, self.context)
        return False

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Checkpoint the current position (rank 0 writes; once per position); return its path."""
        folder = self.run_dir / "checkpoints"
        position = (self.epoch, self.batch_in_epoch, self.global_step)
        if position == self._last_saved and self._last_checkpoint is not None:
            return self._last_checkpoint
        path = folder / checkpoint_name(self.global_step)
        self._flush_window(log=False)
        if self.is_main:
            meta = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "recipe": self.recipe.name}
            path = save_checkpoint(folder, self.global_step, self.model, self._train_state(), meta)
        self._last_saved, self._last_checkpoint = position, path
        self._call("on_checkpoint", path)
        return path

    def _train_state(self) -> dict[str, Any]:
        keys = state_keys(self.callbacks)
        return {
            "format": 1,
            "position": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step},
            "stages_applied": list(self.stages_applied),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": capture_rng_state(),
            "callbacks": {key: callback.state_dict() for key, callback in zip(keys, self.callbacks)},
            "progress": {
                "epoch_loss_sum": self._epoch_loss[0],
                "epoch_loss_count": self._epoch_loss[1],
                "epoch_skipped": self._epoch_skipped,
                "nonfinite_steps": self.nonfinite_steps,
                "last_eval_step": self.last_eval_step,
                "eval_pending": self.eval_pending,
                "last_val_metrics": dict(self.last_val_metrics),
                "history": [dict(row) for row in self.history],
            },
        }

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        load_model_weights(self.model, {k: v.to(self.device) for k, v in checkpoint.weights.items()}, checkpoint.path)
        for index in state["stages_applied"]:
            apply_stage(self.model, self.recipe, self.optimizer, self.config.stages[index], index)
            self.stages_applied.append(index)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        for key, callback in zip(state_keys(self.callbacks), self.callbacks):
            saved = state["callbacks"].get(key)
            if saved is not None:
                callback.load_state_dict(saved)
        position, progress = state["position"], state["progress"]
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        self.global_step = position["global_step"]
        self._epoch_loss = [progress["epoch_loss_sum"], progress["epoch_loss_count"]]
        self._epoch_skipped = progress["epoch_skipped"]
        self.nonfinite_steps = progress["nonfinite_steps"]
        self.last_eval_step = progress["last_eval_step"]
        self.eval_pending = progress["eval_pending"]
        self.last_val_metrics = dict(progress["last_val_metrics"])
        self.history = [dict(row) for row in progress["history"]]
        restore_rng_state(state["rng"])
        self._last_saved, self._last_checkpoint = (self.epoch, self.batch_in_epoch, self.global_step), checkpoint.path
        self.log(f"resumed from {checkpoint.path} (epoch {self.epoch + 1}, step {self.global_step})")

    def _result(self, last: Path) -> FitResult:
        checkpointing = next(c for c in self.callbacks if isinstance(c, Checkpointing))
        best = last.parent / checkpointing.best_name if checkpointing.best_name else None
        metrics = {**(self.history[-1] if self.history else {}), **self.last_val_metrics}
        return FitResult(
            global_step=self.global_step,
            epochs_completed=self.epoch,
            stop_reason=self.stop_reason,
            last_checkpoint=last,
            best_checkpoint=best,
            best_metric=checkpointing.best_value,
            metrics=metrics,
            history=list(self.history),
        )
