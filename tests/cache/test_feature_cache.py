"""Training from stored frozen-encoder outputs reaches the weights of running the encoders."""

from __future__ import annotations

import pytest
import torch

from mmfuse.engine.callbacks import Callback

FROZEN = [f"encoders.{name}.freeze=true" for name in ("text", "image", "audio", "video")]
SHORT = ["trainer.epochs=3", "data.batch_size=4", "trainer.log_every_steps=100", "data.cache=memory"]


class StoreProbe(Callback):
    """Records how often the feature store served a batch or ran the encoder, per encoder."""

    def __init__(self) -> None:
        self.served: dict[str, int] = {}
        self.computed: dict[str, int] = {}

    def on_train_epoch_end(self, trainer, metrics) -> None:
        store = getattr(trainer.model.encode, "__self__", None)
        if store is not None and hasattr(store, "served"):
            self.served, self.computed = dict(store.served), dict(store.computed)


def _train(recipe, folder, probe=None):
    from mmfuse.run import train

    outcome = train(recipe, run_dir=folder, callbacks=[probe] if probe else [])
    assert "encode" not in vars(outcome.fit and _model(outcome)), "the store must be removed after the fit"
    return {name: tensor.detach().clone() for name, tensor in _model(outcome).state_dict().items()}


def _model(outcome):
    from mmfuse.artifact import load_model

    model, _ = load_model(outcome.model_dir)
    return model


def _assert_same_weights(actual, expected, atol=1e-6):
    assert actual.keys() == expected.keys()
    worst = max(float((actual[name].float() - expected[name].float()).abs().max()) for name in expected if expected[name].numel())
    assert worst <= atol, f"weights differ by {worst}"


@pytest.mark.slow
def test_frozen_encoders_train_to_the_same_weights_from_the_cache(demo_recipe, tmp_path):
    plain = _train(demo_recipe(*FROZEN, *SHORT, "data.feature_cache=off"), tmp_path / "plain")
    probe = StoreProbe()
    cached = _train(demo_recipe(*FROZEN, *SHORT, "data.feature_cache=auto"), tmp_path / "cached", probe)
    _assert_same_weights(cached, plain)
    batches = 3  # 12 rows, batch 4
    for name in ("text", "image", "audio", "video"):
        # epoch 1 runs each encoder and stores its rows; epochs 2 and 3 (and validation) are served
        assert probe.computed[name] == batches + 1, (name, probe.computed)
        assert probe.served[name] >= 2 * batches, (name, probe.served)


@pytest.mark.slow
def test_an_encoder_thawed_by_a_stage_runs_again_from_that_stage(demo_recipe, tmp_path):
    stage = ["trainer.stages=[{at_epoch: 2, unfreeze: [image]}]"]
    plain = _train(demo_recipe(*FROZEN, *SHORT, *stage, "data.feature_cache=off"), tmp_path / "plain")
    probe = StoreProbe()
    cached = _train(demo_recipe(*FROZEN, *SHORT, *stage, "data.feature_cache=auto"), tmp_path / "cached", probe)
    _assert_same_weights(cached, plain)
    # image: computed and stored in epoch 1 (3 batches) and its validation (1); served in all of
    # epoch 2 and its validation; from the first step of epoch 3 on it trains and is not consulted
    assert (probe.computed["image"], probe.served["image"]) == (3 + 1, 3 + 1)
    assert probe.served["text"] >= 6
