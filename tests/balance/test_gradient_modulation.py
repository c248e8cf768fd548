"""OGM-GE and modality-balanced learning rates: the formulas, exactly which gradients they touch,
and that the engine calls them between backward and the optimizer step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmfuse.balance.config import GradientModulationConfig, ModalityLRConfig
from mmfuse.balance.modulation import (
    GradientModulation,
    ModalityBalancedLR,
    balanced_lr_factors,
    confidence_ratios,
    ogm_coefficients,
)
from mmfuse.engine.distributed import DistributedContext
from mmfuse.optim import build_optimizer
from tests.balance import tiny


def test_two_modalities_follow_the_paper():
    # Peng et al. 2022: rho_a = s_a / s_v; k = 1 - tanh(alpha * rho) for the one with rho > 1
    scores, valid = torch.tensor([0.9, 0.3]), torch.tensor([True, True])
    k = ogm_coefficients(scores, valid, alpha=0.5)
    assert k[0].item() == pytest.approx(1 - math.tanh(0.5 * 3.0))
    assert k[1].item() == 1.0


def test_more_modalities_compare_with_the_mean_of_the_others_and_skip_absent_ones():
    scores, valid = torch.tensor([0.8, 0.4, 0.2, 0.99]), torch.tensor([True, True, True, False])
    rho = confidence_ratios(scores, valid)
    assert rho.tolist() == pytest.approx([0.8 / 0.3, 0.4 / 0.5, 0.2 / 0.6, 1.0])
    factors = balanced_lr_factors(scores, valid, ModalityLRConfig(gamma=1.0, min_factor=0.25, max_factor=4.0))
    assert factors.tolist() == pytest.approx([0.3 / 0.8, 0.5 / 0.4, 3.0, 1.0])
    alone = confidence_ratios(torch.tensor([0.7, 0.1]), torch.tensor([True, False]))
    assert alone.tolist() == [1.0, 1.0], "nothing to compare with: no modulation"


def stub_trainer(model, step: int = 0):
    return SimpleNamespace(
        model=model, global_step=step, context=DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
        optimizer=None,
    )


def backward_once(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    total, _ = model.compute_loss(model(batch), batch["targets"])
    total.backward()


def test_scales_exactly_the_intended_encoder_gradients():
    recipe = tiny.recipe(task={"unimodal_aux": {"weight": 0.3}}, fusion={"dropout": 0.0})
    model = tiny.model(recipe, seed=2)
    batch = tiny.batch(size=12, seed=3)
    callback = GradientModulation(GradientModulationConfig(alpha=0.8, noise=False))
    trainer = stub_trainer(model)
    callback.on_fit_start(trainer)

    backward_once(model, batch)
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    # the confidences by hand: mean probability of the true class on the rows with the modality
    outputs = model(batch)
    target = batch["targets"]["label"]
    scores = []
    for name in ("left", "right"):
        rows = batch["present"][name]
        probabilities = outputs.unimodal[("label", name)].outputs[rows].softmax(-1)
        scores.append(probabilities.gather(1, target[rows].unsqueeze(1)).mean().item())
    model.unimodal_heads.take_scores("label")  # drop what this extra forward recorded
    backward_once(model, batch)
    rho = scores[0] / scores[1]
    expected = {
        "left": 1 - math.tanh(0.8 * rho) if rho > 1 else 1.0,
        "right": 1 - math.tanh(0.8 / rho) if rho < 1 else 1.0,
    }
    assert min(expected.values()) < 1.0, "the test needs one dominant modality"

    callback.on_before_optimizer_step(trainer)
    for name, param in model.named_parameters():
        if name not in before:
            continue
        encoder = name.split(".")[1] if name.startswith("encoders.") else None
        factor = expected[encoder] if encoder else 1.0
        torch.testing.assert_close(param.grad, before[name] * factor, msg=f"gradient of {name}")
    assert {k: v.item() for k, v in callback.last_coefficients.items()} == pytest.approx(expected)


def test_noise_touches_only_encoders_and_is_the_same_on_every_rank():
    recipe = tiny.recipe(task={"unimodal_aux": {}}, fusion={"dropout": 0.0})
    grads = []
    for _ in range(2):  # two "ranks": same model, same batch, same step
        model = tiny.model(recipe, seed=2)
        callback = GradientModulation(GradientModulationConfig(alpha=0.8, noise=True), seed=7)
        trainer = stub_trainer(model, step=5)
        callback.on_fit_start(trainer)
        backward_once(model, tiny.batch(size=12, seed=3))
        before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        callback.on_before_optimizer_step(trainer)
        after = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        k = {name: value.item() for name, value in callback.last_coefficients.items()}
        for name in before:
            if name.startswith("encoders."):
                assert not torch.allclose(after[name], before[name] * k[name.split(".")[1]])
            else:
                torch.testing.assert_close(after[name], before[name])
        grads.append(after)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])


def test_steps_outside_the_window_are_untouched():
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}}), seed=2)
    callback = GradientModulation(GradientModulationConfig(alpha=5.0, noise=False, start_step=10))
    trainer = stub_trainer(model, step=3)
    callback.on_fit_start(trainer)
    backward_once(model, tiny.batch(size=12, seed=3))
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    callback.on_before_optimizer_step(trainer)
    for name, param in model.named_parameters():
        if name in before:
            torch.testing.assert_close(param.grad, before[name])


def test_needs_auxiliary_heads():
    model = tiny.model(tiny.recipe())
    with pytest.raises(ValueError, match=r"trainer\.gradient_modulation needs.*unimodal_aux"):
        GradientModulation(GradientModulationConfig()).on_fit_start(stub_trainer(model))
    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}}))
    with pytest.raises(ValueError, match=r"trainer\.modality_lr\.task is 'other'.*label"):
        ModalityBalancedLR(ModalityLRConfig(task="other")).on_fit_start(stub_trainer(model))


def test_balanced_lr_scales_only_encoder_groups_for_the_step():
    recipe = tiny.recipe(task={"unimodal_aux": {}}, fusion={"dropout": 0.0})
    model = tiny.model(recipe, seed=2)
    trainer = stub_trainer(model)
    trainer.optimizer = build_optimizer(model, recipe)
    callback = ModalityBalancedLR(ModalityLRConfig(momentum=0.0, gamma=1.0))
    callback.on_fit_start(trainer)
    backward_once(model, tiny.batch(size=12, seed=3))
    callback.on_before_optimizer_step(trainer)
    factors = callback.last_factors
    assert set(factors) == {"left", "right"} and factors["left"] != pytest.approx(factors["right"])
    for group in trainer.optimizer.param_groups:
        name = group["name"]
        encoder = name.split(".")[1] if name.startswith("encoders.") else None
        assert group["lr"] == pytest.approx(0.01 * (factors[encoder] if encoder else 1.0)), name


def test_the_trainer_calls_the_hook_between_backward_and_step(tmp_path):
    """A fit with both options: the hook runs every step with gradients present, and the
    schedule's lr is back in place after each step (factors never compound)."""
    from mmfuse.engine.callbacks import Callback
    from mmfuse.engine.trainer import Trainer
    from mmfuse.data.collate import BatchCollator

    recipe = tiny.recipe(
        task={"unimodal_aux": {"weight": 0.3}},
        trainer={"epochs": 2, "gradient_modulation": {"alpha": 0.5}, "modality_lr": {}, "modality_diagnostics": False},
        data={"batch_size": 4},
    )
    model = tiny.model(recipe)

    class Probe(Callback):
        calls = 0
        with_grads = 0
        lrs: list[float] = []

        def on_before_optimizer_step(self, trainer):
            Probe.calls += 1
            Probe.with_grads += int(all(p.grad is not None for p in trainer.model.encoders.parameters()))

        def on_train_batch_end(self, trainer, loss):
            Probe.lrs.append(max(g["lr"] for g in trainer.optimizer.param_groups))

    rows = TinyRows(16)
    collate = BatchCollator({n: e.preprocessor() for n, e in model.encoders.items()}, dict(model.tasks.items()))
    trainer = Trainer(model, recipe, rows, collate, run_dir=tmp_path, callbacks=[Probe()])
    result = trainer.fit()
    modulation = next(c for c in trainer.callbacks if isinstance(c, GradientModulation))
    balanced = next(c for c in trainer.callbacks if isinstance(c, ModalityBalancedLR))
    assert Probe.calls == result.global_step == 8 and Probe.with_grads == 8
    assert set(modulation.last_coefficients) == {"left", "right"}
    assert set(balanced.last_factors) == {"left", "right"}
    assert Probe.lrs == [pytest.approx(0.01)] * 8, "encoder lr factors leaked past their step"


class TinyRows(torch.utils.data.Dataset):
    """ManifestDataset-like rows: ``{"inputs": {enc: tensors | None}, "targets": {...}}``."""

    def __init__(self, size: int) -> None:
        self.batch = tiny.batch(size=size, seed=9)

    def __len__(self) -> int:
        return int(self.batch["targets"]["label"].shape[0])

    def __getitem__(self, index: int):
        from mmfuse.data.dataset import Sample

        inputs = {
            name: ({"values": tensors["values"][index]} if bool(self.batch["present"][name][index]) else None)
            for name, tensors in self.batch["inputs"].items()
        }
        return Sample(inputs=inputs, targets={"label": self.batch["targets"]["label"][index]})
