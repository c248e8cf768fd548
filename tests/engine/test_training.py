"""The loop's behaviours: accumulation, staged unfreezing, early stopping, non-finite losses,
precision, skipped samples, evaluation, callbacks named in the recipe, signals during evaluation."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.checkpoint import find_resumable
from mmfuse.engine.loggers import TensorBoardLogger
from mmfuse.engine.trainer import NonFiniteLossError, Trainer
from tests.engine.stop_after import StopAfter
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe, weights

QUIET = {"progress": "off", "tensorboard": "off"}


def fit(recipe, run_dir, *, callbacks=(), train=None, val=None, collate=None, resume=None, seed=0, resume_force=False):
    model = tiny_model(recipe, seed=seed)
    trainer = Trainer(
        model, recipe, train or SyntheticRows(32), (collate or TinyCollate)(model),
        val_dataset=val, run_dir=run_dir, callbacks=list(callbacks),
    )
    return trainer, trainer.fit(resume=resume, resume_force=resume_force)


def no_dropout(**trainer):
    return dict(fusion={"type": "mmfuse/concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
                trainer={**QUIET, **trainer})


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    big, _ = fit(tiny_recipe(data={"batch_size": 8}, **no_dropout(epochs=2)), tmp_path / "big")
    small, _ = fit(tiny_recipe(data={"batch_size": 4}, **no_dropout(epochs=2, grad_accum_steps=2)), tmp_path / "small")
    assert big.global_step == small.global_step == 8
    expected = weights(big.model)
    for name, tensor in weights(small.model).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-4)


class Snapshots(Callback):
    """Weights of the 'extra' encoder after every optimizer step."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_fit_start(self, trainer) -> None:
        self.after[trainer.global_step] = weights(trainer.model.encoders["extra"])

    def on_train_batch_end(self, trainer, loss) -> None:
        self.after[trainer.global_step] = weights(trainer.model.encoders["extra"])


def staged_recipe(**trainer):
    return tiny_recipe(
        encoders={"feats": {"type": "mmfuse/vector", "input_dim": 6, "hidden_dim": 16, "output_dim": 8},
                  "extra": {"type": "mmfuse/vector", "input_dim": 6, "hidden_dim": 8, "output_dim": 8,
                            "num_layers": 3, "freeze": True}},
        trainer={**QUIET, "epochs": 2, "stages": [{"at_step": 3, "unfreeze": ["extra"], "lr": 0.002, "trainable_layers": 2}], **trainer},
    )


def test_staged_unfreezing_moves_the_right_parameters_at_the_right_step(tmp_path):
    snapshots = Snapshots()
    trainer, _ = fit(staged_recipe(), tmp_path, callbacks=[snapshots])
    changed = lambda a, b: sorted(k for k in a if not torch.equal(a[k], b[k]))  # noqa: E731
    for step in (1, 2, 3):
        assert changed(snapshots.after[step - 1], snapshots.after[step]) == [], f"frozen encoder moved at step {step}"
    moved = changed(snapshots.after[3], snapshots.after[4])
    # layer groups are [norm, layers.0, layers.1, layers.2]: the last two train, the rest stay frozen
    assert moved and all(name.startswith(("layers.1.", "layers.2.")) for name in moved)
    assert changed(snapshots.after[0], snapshots.after[trainer.global_step]) == moved

    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["encoders.extra@stage0"]["initial_lr"] == 0.002
    # the groups that trained from the start kept their optimizer state (not rebuilt at step 3)
    first = trainer.optimizer.param_groups[0]["params"][0]
    assert int(trainer.optimizer.state[first]["step"]) == trainer.global_step == 16
    late = groups["encoders.extra@stage0"]["params"][0]
    assert int(trainer.optimizer.state[late]["step"]) == 13


def test_resume_past_a_stage_boundary_is_exact(tmp_path):
    full, _ = fit(staged_recipe(), tmp_path / "full")
    fit(staged_recipe(), tmp_path / "cut", callbacks=[StopAfter(5)])
    resumed, _ = fit(staged_recipe(), tmp_path / "cut", resume=tmp_path / "cut", seed=9)
    expected = weights(full.model)
    assert all(torch.equal(v, expected[k]) for k, v in weights(resumed.model).items())
    assert [g["name"] for g in resumed.optimizer.param_groups] == [g["name"] for g in full.optimizer.param_groups]


def test_early_stopping_stops_and_says_why(tmp_path):
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 20, "early_stopping": {"monitor": "val/loss", "min_delta": 100.0, "patience": 2}})
    trainer, result = fit(recipe, tmp_path, val=SyntheticRows(8, seed=2))
    assert result.stop_reason == "early_stopping"
    assert result.epochs_completed == 3  # first evaluation sets the best; two more without improvement
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_early_stopping_reports_a_missing_metric(tmp_path):
    from mmfuse.engine.callbacks import EarlyStopping
    from mmfuse.engine.config import EarlyStoppingConfig
    from mmfuse.recipe import RecipeError

    with pytest.raises(RecipeError, match="val/label/accuracy"):  # named in a recipe: caught when it is read
        tiny_recipe(trainer=QUIET, callbacks=[{"type": "mmfuse/early_stopping", "monitor": "val/label/acc"}])
    stopping = EarlyStopping(EarlyStoppingConfig(monitor="val/label/acc"))  # given from Python: at the first evaluation
    with pytest.raises(KeyError, match="val/label/accuracy"):
        fit(tiny_recipe(trainer=QUIET), tmp_path, val=SyntheticRows(8, seed=2), callbacks=[stopping])


class PoisonedCollate(TinyCollate):
    """Batches containing row 0 get NaN features, so their loss is NaN."""

    def __call__(self, rows):
        batch = super().__call__(rows)
        if any(row["x"][0] == self.marker for row in rows):
            batch["inputs"]["feats"]["values"][:] = float("nan")
        return batch


def poisoned(model):
    collate = PoisonedCollate(model)
    collate.marker = SyntheticRows(32).features[0, 0].item()
    return collate


@pytest.mark.parametrize("optimizer", ["adamw", "adadelta"])
def test_nonfinite_loss_skips_the_step(tmp_path, optimizer):
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 2, "log_every_steps": 3}, optimizer={"name": optimizer, "lr": 0.01})
    trainer, result = fit(recipe, tmp_path, collate=poisoned)
    assert result.stop_reason == "completed"
    assert trainer.nonfinite_steps == 2  # one poisoned batch per epoch
    assert all(torch.isfinite(v).all() for v in weights(trainer.model).values())
    assert math.isfinite(result.metrics["train/loss"])
    if optimizer == "adamw":  # the fused kernel skipped on the device: its step counters did not advance
        first = trainer.optimizer.param_groups[0]["params"][0]
        assert int(trainer.optimizer.state[first]["step"]) == trainer.global_step - 2


def test_nonfinite_loss_stops_when_asked(tmp_path):
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 2, "nonfinite_loss": "stop", "log_every_steps": 1})
    with pytest.raises(NonFiniteLossError, match="nonfinite_loss=stop"):
        fit(recipe, tmp_path, collate=poisoned)


def test_fp16_on_cpu_is_a_clear_error_and_bf16_trains(tmp_path):
    with pytest.raises(ValueError, match="use precision=bf16 on CPU"):
        fit(tiny_recipe(trainer={**QUIET, "precision": "fp16"}), tmp_path / "fp16")
    trainer, result = fit(tiny_recipe(trainer={**QUIET, "precision": "bf16", "epochs": 1}), tmp_path / "bf16")
    assert math.isfinite(result.metrics["train/loss"]) and result.global_step == 8


class SkippingCollate(TinyCollate):
    def __call__(self, rows):
        return {**super().__call__(rows), "skipped": 2}


def test_skipped_samples_are_counted_per_epoch(tmp_path, capsys):
    _, result = fit(tiny_recipe(trainer={**QUIET, "epochs": 2}), tmp_path, collate=SkippingCollate)
    assert [row["train/skipped"] for row in result.history] == [16, 16]
    assert "epoch 2: skipped 16 bad sample(s)" in capsys.readouterr().out


def test_evaluate_standalone_reports_loss_and_task_metrics(tmp_path):
    recipe = tiny_recipe(trainer=QUIET)
    model = tiny_model(recipe)
    trainer = Trainer(model, recipe, SyntheticRows(8), TinyCollate(model), run_dir=tmp_path)
    data = SyntheticRows(10, seed=4)
    metrics = trainer.evaluate(data, prefix="test")
    assert set(metrics) == {"test/loss", "test/label/loss", "test/label/accuracy", "test/label/precision", "test/label/recall", "test/label/f1", "test/skipped"}
    batch = TinyCollate(model)([data[i] for i in range(10)])
    model.eval()
    with torch.no_grad():
        logits = model(batch)["label"]
    expected = torch.nn.functional.cross_entropy(logits, batch["targets"]["label"]).item()
    assert metrics["test/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test/label/loss"] == pytest.approx(expected, rel=1e-5)  # the only task, weight 1
    accuracy = (logits.argmax(-1) == batch["targets"]["label"]).float().mean().item()
    assert metrics["test/label/accuracy"] == pytest.approx(accuracy)


class FakeWriter:
    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def close(self):
        self.closed = True


def test_tensorboard_logger_writes_scalars(tmp_path):
    writers = []
    logger = TensorBoardLogger(writer_factory=lambda d: writers.append(FakeWriter(d)) or writers[-1])
    fit(tiny_recipe(trainer={**QUIET, "epochs": 1, "log_every_steps": 4}), tmp_path, callbacks=[logger], val=SyntheticRows(8, 1))
    (writer,) = writers
    keys = {(k, s) for k, _, s in writer.scalars}
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    assert {("train/loss", 4), ("train/loss", 8), ("val/label/accuracy", 8), ("epoch/train/loss", 8)} <= keys


class SignalsSelfDuringEval(SyntheticRows):
    def __getitem__(self, index):
        if index == 3 and not getattr(self, "fired", False):
            self.fired = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


def test_sigterm_during_evaluation_checkpoints_and_reruns_it_on_resume(tmp_path):
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 2, "eval_every_steps": 3}, data={"batch_size": 4, "eval_batch_size": 2})
    val = SignalsSelfDuringEval(8, seed=1)
    trainer, result = fit(recipe, tmp_path, val=val)
    assert result.stop_reason == "signal" and result.global_step == 3
    checkpoint = find_resumable(tmp_path)
    assert checkpoint.state["eval_pending"] is True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the fit

    resumed, result = fit(recipe, tmp_path, val=val, resume=tmp_path)
    assert result.stop_reason == "completed" and result.global_step == 16
    evals = (tmp_path / "evals.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in evals[1:]] == ["3", "6", "8", "9", "12", "15", "16"]
