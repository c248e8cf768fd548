"""mmfuse/image_timm on tiny timm models saved with save_for_hf (local-dir:) or as a checkpoint file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmfuse.contracts import SampleError
from mmfuse.testing.media import write_png
from mmfuse.testing.tiny_models import save_tiny_timm_checkpoint
from tests.encoders.checks import (
    assert_export_roundtrip,
    assert_freezing_controls_gradients,
    assert_layer_groups_cover_encoder,
    assert_missing_and_corrupt_files_are_sample_errors,
    assert_output_contract,
    assert_pickled_copy_preprocesses_alike,
    build_encoder,
    encode,
)

NAME = "mmfuse/image_timm"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return [
        str(write_png(folder / "rgb.png", size=(40, 30))),
        str(write_png(folder / "gray.png", size=(32, 32), mode="L", seed=1)),
        str(write_png(folder / "rgba.png", size=(64, 48), mode="RGBA", seed=2)),
    ]


@pytest.fixture()
def encoder(vit_name):
    return build_encoder(NAME, model=vit_name).eval()


def test_local_dir_model_loads_its_saved_weights_and_preprocessing(encoder, vit_name):
    saved = load_file(vit_name.removeprefix("local-dir:") + "/model.safetensors")
    torch.testing.assert_close(encoder.backbone.pos_embed, saved["pos_embed"], rtol=0, atol=0)
    settings = encoder.preprocessor().settings()
    assert settings["image_size"] == [32, 32] and settings["mean"] == [0.5, 0.5, 0.5]


def test_checkpoint_file_is_loaded(tmp_path):
    checkpoint = save_tiny_timm_checkpoint(tmp_path / "resnet.safetensors", "test_resnet")
    encoder = build_encoder(NAME, model="test_resnet", pretrained=False, checkpoint=str(checkpoint), image_size=32)
    saved = load_file(str(checkpoint))
    torch.testing.assert_close(encoder.backbone.conv1[0].weight, saved["conv1.0.weight"], rtol=0, atol=0)
    _, output = encode(encoder.eval(), [np.zeros((20, 20, 3), dtype=np.uint8)])
    assert_output_contract(output, 1, encoder.output_dim)
    assert output.tokens.shape[1] == 1  # 32 px / stride 32 = one spatial token


def test_png_files_and_in_memory_images_give_one_batch(encoder, images):
    values = images + [None, Image.new("RGB", (10, 10)), np.random.default_rng(0).random((8, 9))]
    batch, output = encode(encoder, values)
    assert batch["pixels"].shape == (6, 3, 32, 32)
    assert_output_contract(output, 6, 64)
    assert output.mask.all()
    assert output.tokens.shape[1] == 1 + (32 // 16) ** 2  # class token + patches


def test_grayscale_is_replicated_and_transparency_becomes_white(encoder, tmp_path):
    preprocessor = encoder.preprocessor()
    gray = preprocessor(write_png(tmp_path / "g.png", mode="L"))["pixels"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    clear = np.zeros((32, 32, 4), dtype=np.uint8)  # black but fully transparent
    pixels = preprocessor(clear)["pixels"]
    torch.testing.assert_close(pixels, torch.ones_like(pixels))  # white after (1 - 0.5) / 0.5


def test_overrides_change_size_and_normalisation(vit_name):
    encoder = build_encoder(
        NAME, model=vit_name, image_size=48, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], crop_pct=1.0,
        model_kwargs={"img_size": 48},
    )
    preprocessor = encoder.preprocessor()
    pixels = preprocessor(Image.new("RGB", (60, 60), (255, 255, 255)))["pixels"]
    assert pixels.shape == (3, 48, 48)
    torch.testing.assert_close(pixels, torch.ones_like(pixels))
    assert encoder(preprocessor.collate([{"pixels": pixels}])).tokens.shape[1] == 1 + 9


def test_missing_and_corrupt_files_are_sample_errors_naming_the_path(encoder, tmp_path):
    preprocessor = encoder.preprocessor()
    assert_missing_and_corrupt_files_are_sample_errors(
        preprocessor, tmp_path, ".png", "image file not found", "cannot read image"
    )
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(write_png(tmp_path / "whole.png", size=(64, 64)).read_bytes()[:200])
    with pytest.raises(SampleError, match="corrupt"):
        preprocessor(str(truncated))


def test_unknown_model_name_suggests_timm_names():
    with pytest.raises(ValueError, match=r"Unknown timm model 'resnet5O'.*resnet50"):
        build_encoder(NAME, model="resnet5O", pretrained=False)


def test_offline_pretrained_weights_and_missing_checkpoint_explain_the_fix(tmp_path):
    with pytest.raises(OSError, match="HF_HUB_OFFLINE") as caught:
        build_encoder(NAME, model="test_resnet", pretrained=True)
    assert caught.value.__cause__ is not None
    with pytest.raises(FileNotFoundError, match=f"checkpoint file not found: {tmp_path / 'x.pth'}"):
        build_encoder(NAME, model="test_resnet", pretrained=False, checkpoint=str(tmp_path / "x.pth"))


def test_freezing_and_layer_groups(encoder, images):
    batch, _ = encode(encoder, images)
    assert_layer_groups_cover_encoder(encoder, minimum=3)
    first = {id(p) for p in encoder.layer_groups()[0].parameters()}
    assert id(encoder.backbone.patch_embed.proj.weight) in first and id(encoder.backbone.cls_token) in first
    assert_freezing_controls_gradients(encoder.train(), batch)


def test_gradient_checkpointing_uses_timm_support(encoder, images):
    encoder.set_grad_checkpointing(True)
    assert encoder.backbone.grad_checkpointing is True
    batch, _ = encode(encoder, images)
    encoder.train()(batch).pooled.sum().backward()
    assert encoder.backbone.blocks[0].attn.qkv.weight.grad is not None


def test_export_assets_rebuilds_offline_without_the_source_folder(encoder, vit_name, images, tmp_path):
    overrides = assert_export_roundtrip(NAME, {"model": vit_name}, encoder, images, tmp_path / "image")
    assert overrides["model"] == "test_vit" and overrides["model_kwargs"]["img_size"] == [32, 32]
    assert overrides["mean"] == [0.5, 0.5, 0.5]  # pinned: bare test_vit would default otherwise


def test_preprocessor_pickles_for_dataloader_workers(encoder, images):
    preprocessor = encoder.preprocessor()
    assert_pickled_copy_preprocesses_alike(preprocessor, images[0])
    assert preprocessor.reads_files is True
