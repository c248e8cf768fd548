"""``encoders.<name>.gradient_checkpointing: true`` reaches the encoder when the fused model is
built, recomputes activations in the backward pass and leaves the gradients unchanged; the older
``trainer.gradient_checkpointing`` list is read as that key, with a deprecation warning; an encoder
that cannot checkpoint is an error naming the key."""

from __future__ import annotations

import warnings

import pytest
import torch

from mmfuse.model import build_fused_model
from mmfuse.recipe import RecipeError, TrainerCheckpointingDeprecation, parse_recipe
from mmfuse.testing.media import write_png
from mmfuse.testing.tiny_models import save_tiny_bert

TEXTS = ["a small cat sat on the mat", "hello world", "the dog ran far away today"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return [str(write_png(folder / f"{index}.png", size=(32, 32), seed=index)) for index in range(len(TEXTS))]


def _recipe(bert_folder, vit_name, *overrides):
    raw = {
        "encoders": {
            "text": {"type": "text_hf", "model": str(bert_folder), "pooling": "mean"},
            "image": {"type": "image_timm", "model": vit_name},
        },
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
    }
    return parse_recipe(raw, overrides=list(overrides))


def _count_calls(module, calls, name):
    """Count ``module``'s forward runs (a forward hook does not see a checkpoint's recomputation)."""
    forward = module.forward

    def counted(*args, **kwargs):
        calls[name] += 1
        return forward(*args, **kwargs)

    module.forward = counted


def _gradients(recipe, images):
    torch.manual_seed(0)
    model = build_fused_model(recipe).train()
    inputs, present = {}, {}
    for name, values in (("text", TEXTS), ("image", images)):
        preprocessor = model.encoders[name].preprocessor()
        inputs[name] = preprocessor.collate([preprocessor(value) for value in values])
        present[name] = torch.ones(len(values), dtype=torch.bool)
    batch = {"inputs": inputs, "present": present, "targets": {"label": torch.tensor([0, 1, 0])}}
    calls = {"text": 0, "image": 0}
    _count_calls(model.encoders["text"].model.encoder.layer[0].attention, calls, "text")
    _count_calls(model.encoders["image"].backbone.blocks[0].attn, calls, "image")
    loss = model.tasks["label"].loss(model(batch)["label"], batch["targets"]["label"])
    loss.backward()
    return model, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, calls


def test_the_key_checkpoints_the_encoders_and_keeps_the_gradients(bert_folder, vit_name, images):
    plain_model, plain, plain_calls = _gradients(_recipe(bert_folder, vit_name), images)
    recipe = _recipe(
        bert_folder, vit_name, "encoders.text.gradient_checkpointing=true", "encoders.image.gradient_checkpointing=true"
    )
    model, checkpointed, calls = _gradients(recipe, images)
    assert model.encoders["text"].model.is_activation_checkpointing
    assert model.encoders["image"].backbone.grad_checkpointing is True
    assert not plain_model.encoders["text"].model.is_activation_checkpointing
    # the first attention of each backbone ran again in the backward pass: activations were recomputed
    assert plain_calls == {"text": 1, "image": 1} and calls == {"text": 2, "image": 2}
    assert set(checkpointed) == set(plain) and any(name.startswith("encoders.text.") for name in plain)
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, atol=1e-6, rtol=1e-5, msg=name)
    assert recipe.to_dict()["encoders"]["image"]["gradient_checkpointing"] is True


def test_the_trainer_list_is_read_as_the_encoder_key_with_a_warning(bert_folder, vit_name):
    with pytest.warns(TrainerCheckpointingDeprecation, match=r"encoders\.image\.gradient_checkpointing: true"):
        recipe = _recipe(bert_folder, vit_name, "trainer.gradient_checkpointing=[image]")
    assert recipe.encoders["image"].gradient_checkpointing and not recipe.encoders["text"].gradient_checkpointing
    assert recipe.trainer.gradient_checkpointing == []  # the resolved recipe holds the new form only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _recipe(bert_folder, vit_name, "encoders.image.gradient_checkpointing=true")  # no warning
    with pytest.raises(RecipeError, match="trainer.gradient_checkpointing.*'txt'"):
        _recipe(bert_folder, vit_name, "trainer.gradient_checkpointing=[txt]")


def test_an_encoder_that_cannot_checkpoint_is_an_error_naming_the_key():
    raw = {
        "encoders": {"words": {"type": "text_small", "gradient_checkpointing": True}},
        "fusion": {"type": "concat", "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
    }
    with pytest.raises(ValueError, match=r"encoders\.words\.gradient_checkpointing: .* cannot checkpoint activations"):
        build_fused_model(parse_recipe(raw))


def test_a_trainer_config_without_a_recipe_still_applies_the_list_with_a_warning(tmp_path, capsys):
    from mmfuse.engine.config import TrainerConfig
    from mmfuse.engine.trainer import Trainer
    from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe

    model = tiny_model(tiny_recipe())
    calls = []
    model.encoders["feats"].set_grad_checkpointing = lambda enable=True: calls.append(enable)
    config = TrainerConfig(epochs=1, max_steps=1, progress="off", tensorboard="off", gradient_checkpointing=["feats"])
    trainer = Trainer(model, config, SyntheticRows(8), TinyCollate(model), run_dir=tmp_path / "run")
    with pytest.warns(FutureWarning, match=r"encoders\.<name>\.gradient_checkpointing: true"):
        trainer.fit()
    assert calls == [True] and "gradient checkpointing: feats" in capsys.readouterr().out


def test_turning_checkpointing_on_is_not_a_different_run_on_resume():
    from mmfuse.engine.run_settings import describe_run
    from tests.engine.tiny import tiny_recipe

    def settings(*overrides):
        recipe = tiny_recipe(*overrides)
        return describe_run(seed=0, data=recipe.data, world_size=1, grad_accum_steps=1, train_rows=8,
                            recipe=recipe, optimizer=None, scheduler=None)["encoders"]

    assert settings("encoders.feats.gradient_checkpointing=true") == settings()
    assert settings("encoders.feats.freeze=true") != settings()  # a real change still counts
