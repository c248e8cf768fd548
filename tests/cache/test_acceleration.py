"""trainer.compile (with its fallback report), trainer.channels_last, and the loader report."""

from __future__ import annotations

import pytest
import torch

SHORT = ["trainer.epochs=1", "data.batch_size=6", "data.cache=memory", "trainer.restore_best=false"]


def _weights(outcome):
    from mmfuse.artifact import load_model

    model, _ = load_model(outcome.model_dir)
    return model.state_dict()


def _assert_close(actual, expected, atol):
    differences = {k: float((actual[k].float() - expected[k].float()).abs().max()) for k in expected if expected[k].numel()}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= atol, f"weights differ by {differences[worst]} ({worst})"


@pytest.mark.slow
def test_compiled_model_trains_to_the_same_weights_and_reports_graph_breaks(demo_recipe, tmp_path, capsys):
    from mmfuse.run import train

    plain = train(demo_recipe(*SHORT), run_dir=tmp_path / "plain")
    compiled = train(demo_recipe(*SHORT, "trainer.compile=true", "trainer.compile_options={backend: eager}"), run_dir=tmp_path / "compiled")
    _assert_close(_weights(compiled), _weights(plain), 1e-5)
    out = capsys.readouterr().out
    assert "torch.compile: compiling the fused model (eager)" in out
    assert "compiled graph(s)" in out  # the outcome after the first step: frames and graph breaks


@pytest.mark.slow
def test_a_backend_that_fails_falls_back_to_eager(demo_recipe, tmp_path, capsys):
    import torch._dynamo
    from torch._dynamo import register_backend

    from mmfuse.run import train

    @register_backend(name="mmfuse_test_broken")
    def broken(graph, example_inputs):  # noqa: ARG001 - a backend that cannot compile anything
        raise RuntimeError("this backend always fails")

    outcome = train(demo_recipe(*SHORT, "trainer.compile=true", "trainer.compile_options={backend: mmfuse_test_broken}"),
                    run_dir=tmp_path / "run")
    assert outcome.fit.global_step == 2
    out = capsys.readouterr().out
    assert "nothing could be compiled (RuntimeError: this backend always fails); the model runs eagerly" in out
    torch._dynamo.reset()


def test_channels_last_converts_conv_encoders_and_keeps_the_numbers(demo_recipe, tmp_path, capsys):
    from mmfuse.engine.callbacks import Callback
    from mmfuse.run import train

    class Layout(Callback):
        """Records the layout of the image encoder's input and of its conv weights."""

        def __init__(self) -> None:
            self.inputs: list[bool] = []
            self.weights: list[bool] = []

        def on_fit_start(self, trainer) -> None:
            encoder = trainer.model.encoders["image"]
            encoder.register_forward_pre_hook(lambda module, args: self.inputs.append(
                args[0]["pixels"].is_contiguous(memory_format=torch.channels_last)) if module.training else None)

        def on_train_epoch_end(self, trainer, metrics) -> None:
            convs = [m for m in trainer.model.encoders["video"].modules() if isinstance(m, torch.nn.Conv2d)]
            self.weights = [conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs]

    probe = Layout()
    train(demo_recipe(*SHORT, "trainer.channels_last=true"), run_dir=tmp_path / "cl", callbacks=[probe])
    assert probe.inputs and all(probe.inputs)
    assert probe.weights and all(probe.weights)
    assert "channels_last: convolutional encoders image, audio, video" in capsys.readouterr().out


def test_channels_last_gives_the_same_outputs(demo_recipe):
    """The layout changes which kernels run, not what they compute (training then drifts only by
    rounding, which Adam can amplify, so the check is on one forward pass)."""
    from mmfuse.acceleration.memory_format import conv_encoders
    from mmfuse.run import prepare

    prepared = prepare(demo_recipe(*SHORT))
    model = prepared.model.eval()
    batch = prepared.collate([prepared.train[index] for index in range(6)])
    with torch.no_grad():
        expected = model(batch)["label"]
        for name in conv_encoders(model):
            model.encoders[name].to(memory_format=torch.channels_last)
            for key, value in batch["inputs"][name].items():
                if value.dim() == 4 and value.is_floating_point():
                    batch["inputs"][name][key] = value.contiguous(memory_format=torch.channels_last)
        actual = model(batch)["label"]
    assert torch.allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_loader_report_at_start(demo_recipe, tmp_path, capsys):
    from mmfuse.run import train

    train(demo_recipe(*SHORT, "data.cache=off"), run_dir=tmp_path / "run")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data loading:"))
    assert "0 worker process(es)" in line and "sample cache off" in line


def test_gradient_checkpointing_keeps_the_weights(demo_recipe, tmp_path):
    from mmfuse.run import train

    recipe = ["trainer.epochs=1", "data.batch_size=6", "data.cache=memory"]
    plain = train(demo_recipe(*recipe), run_dir=tmp_path / "plain")
    checkpointed = train(
        demo_recipe(*recipe, "encoders.text.gradient_checkpointing=true", "encoders.image.gradient_checkpointing=true"),
        run_dir=tmp_path / "ckpt",
    )
    # parameters: identical training. BatchNorm buffers are not compared: the recomputed forward
    # of a checkpointed BatchNorm network updates its running statistics a second time (as
    # PyTorch's and timm's checkpointing do), which docs/performance.md points out
    from mmfuse.artifact import load_model

    names = {name for name, _ in load_model(plain.model_dir)[0].named_parameters()}
    after, before = _weights(checkpointed), _weights(plain)
    _assert_close({k: after[k] for k in names}, {k: before[k] for k in names}, 1e-6)
    assert float((after["encoders.image.backbone.layer1.0.bn1.num_batches_tracked"]
                  - before["encoders.image.backbone.layer1.0.bn1.num_batches_tracked"]).abs()) > 0  # the caveat is real


def test_gradient_checkpointing_of_an_unknown_encoder_is_a_clear_error(demo_recipe):
    from mmfuse.run import train

    from mmfuse.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"trainer.gradient_checkpointing.0 .*names encoder 'txt'.*Did you mean 'text'"):
        demo_recipe(*SHORT, "trainer.gradient_checkpointing=[txt]")
