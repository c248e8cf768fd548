"""What one optimizer step does: the accumulation remainder, when stages apply, one-row batches
with BatchNorm, the callback hooks around a step, and training a FusedModel without a Recipe."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse.data.config import DataConfig
from mmfuse.engine.callbacks import Callback
from mmfuse.engine.config import OptimizerConfig, TrainerConfig
from mmfuse.engine.trainer import Trainer
from tests.engine.test_training import Snapshots, fit, no_dropout, staged_recipe
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe, weights

QUIET = {"progress": "off", "tensorboard": "off"}


def test_a_short_last_accumulation_step_weighs_like_the_unaccumulated_run(tmp_path):
    # 36 rows: batch 4 x accum 2 ends each epoch with one lone micro-batch (a step of 4 rows)
    sgd = {"name": "sgd", "lr": 0.1}
    kwargs = no_dropout(epochs=2)
    big, _ = fit(tiny_recipe(data={"batch_size": 8, "shuffle": False}, optimizer=sgd, **kwargs), tmp_path / "big", train=SyntheticRows(36))
    kwargs["trainer"]["grad_accum_steps"] = 2
    small, _ = fit(tiny_recipe(data={"batch_size": 4, "shuffle": False}, optimizer=sgd, **kwargs), tmp_path / "small", train=SyntheticRows(36))
    assert big.global_step == small.global_step == 10
    expected = weights(big.model)
    for name, tensor in weights(small.model).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0)


def test_an_at_epoch_stage_trains_from_the_first_step_of_its_epoch(tmp_path):
    snapshots = Snapshots()
    recipe = staged_recipe(stages=[{"at_epoch": 1, "unfreeze": ["extra"], "lr": 0.002}])
    trainer, _ = fit(recipe, tmp_path, callbacks=[snapshots])
    assert trainer.steps_per_epoch == 8
    moved = lambda step: [k for k in snapshots.after[step] if not torch.equal(snapshots.after[step - 1][k], snapshots.after[step][k])]  # noqa: E731
    assert all(moved(step) == [] for step in range(1, 9))  # epoch 1: frozen
    assert moved(9), "the stage for epoch 2 did not train its first step"


class BatchNormVector(Encoder):
    """The tiny vector encoder with a BatchNorm on its pooled output (which cannot train on one row)."""

    def __init__(self, base: Encoder) -> None:
        super().__init__()
        self.base, self.modality, self.output_dim = base, base.modality, base.output_dim
        self.norm = nn.BatchNorm1d(base.output_dim)

    def forward(self, inputs):
        out = self.base(inputs)
        return EncoderOutput(out.tokens, out.mask, self.norm(out.pooled))

    def preprocessor(self):
        return self.base.preprocessor()


def test_a_fused_model_trains_from_python_and_one_row_batches_are_dropped_for_batchnorm(tmp_path, capsys):
    model = tiny_model(tiny_recipe())
    model.encoders["feats"] = BatchNormVector(model.encoders["feats"])
    # no Recipe: a TrainerConfig, loader settings and an optimizer config
    trainer = Trainer(
        model, TrainerConfig(epochs=2, log_every_steps=2, **QUIET), SyntheticRows(17), TinyCollate(model),
        val_dataset=SyntheticRows(6, seed=1), run_dir=tmp_path,
        data=DataConfig(batch_size=4, shuffle=False), optimizer=OptimizerConfig(name="sgd", lr=0.05), seed=1,
    )
    before = weights(model)
    result = trainer.fit()  # 17 rows, batch 4: the fifth batch of each epoch has one row
    assert result.global_step == 10 and result.stop_reason == "completed"
    assert [row["train/dropped_one_row_batches"] for row in result.history] == [1, 1]
    assert "dropped 1 one-row batch(es)" in capsys.readouterr().out
    assert not torch.equal(weights(model)["encoders.feats.norm.weight"], before["encoders.feats.norm.weight"])
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {0.05}


class StepHooks(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.grad_norms: list[float] = []

    def on_train_batch_start(self, trainer, batch) -> None:
        self.events.append(("batch", len(batch["targets"]["label"])))

    def on_before_optimizer_step(self, trainer) -> None:
        self.events.append(("before_step", trainer.global_step))
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_train_batch_end(self, trainer, loss) -> None:
        self.events.append(("end", trainer.global_step))


def test_step_hooks_run_per_micro_batch_and_before_clipping(tmp_path):
    hooks = StepHooks()
    recipe = tiny_recipe(trainer={**QUIET, "epochs": 1, "grad_accum_steps": 2, "clip_grad_norm": 1e-4})
    fit(recipe, tmp_path, callbacks=[hooks], train=SyntheticRows(12))
    assert hooks.events == [
        ("batch", 4), ("batch", 4), ("before_step", 0), ("end", 1),
        ("batch", 4), ("before_step", 1), ("end", 2),
    ]
    assert min(hooks.grad_norms) > 1e-3  # the hook saw the gradients before they were clipped to 1e-4


class ZeroedExtraCollate(TinyCollate):
    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["inputs"]["extra"]["values"].zero_()
        return batch


def test_a_batch_edited_by_on_train_batch_start_is_what_trains(tmp_path):
    class ZeroExtra(Callback):
        def on_train_batch_start(self, trainer, batch):
            batch["inputs"]["extra"]["values"].zero_()

    edited, _ = fit(tiny_recipe(**no_dropout(epochs=1)), tmp_path / "hook", callbacks=[ZeroExtra()])
    zeroed, _ = fit(tiny_recipe(**no_dropout(epochs=1)), tmp_path / "data", collate=ZeroedExtraCollate)
    expected = weights(zeroed.model)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in weights(edited.model).items())
