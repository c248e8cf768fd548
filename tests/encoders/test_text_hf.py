"""mmfuse/text_hf on a tiny BERT saved with save_pretrained and loaded back by folder name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmfuse.contracts import SampleError
from mmfuse.testing.samples import SAMPLE_TEXTS
from mmfuse.testing.tiny_models import save_tiny_bert
from tests.encoders.checks import (
    assert_export_roundtrip,
    assert_freezing_controls_gradients,
    assert_layer_groups_cover_encoder,
    assert_output_contract,
    assert_pickled_copy_preprocesses_alike,
    build_encoder,
    encode,
)

NAME = "mmfuse/text_hf"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture()
def encoder(bert_folder):
    return build_encoder(NAME, model=str(bert_folder)).eval()


def test_pretrained_weights_come_from_the_saved_folder(encoder, bert_folder):
    saved = load_file(str(bert_folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(encoder.model.get_input_embeddings().weight, saved[key], rtol=0, atol=0)
    assert encoder.output_dim == 32


def test_pretrained_false_builds_the_architecture_with_fresh_weights(bert_folder):
    encoder = build_encoder(NAME, model=str(bert_folder), pretrained=False)
    saved = load_file(str(bert_folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    assert encoder.model.get_input_embeddings().weight.shape == saved[key].shape
    assert not torch.equal(encoder.model.get_input_embeddings().weight, saved[key])


def test_batch_of_texts_gives_padded_ids_masks_and_features(encoder):
    batch, output = encode(encoder, [SAMPLE_TEXTS[0], SAMPLE_TEXTS[2], None, SAMPLE_TEXTS[1]])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    # [CLS] + words + [SEP]; the missing text becomes "" -> [CLS] [SEP]
    assert lengths == [len(SAMPLE_TEXTS[0].split()) + 2, len(SAMPLE_TEXTS[2].split()) + 2, 2, 5]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # [PAD] id
    assert_output_contract(output, 4, 32)
    assert torch.equal(output.mask, batch["attention_mask"].bool())


def test_max_length_truncates(bert_folder):
    encoder = build_encoder(NAME, model=str(bert_folder), max_length=4)
    batch, _ = encode(encoder, [SAMPLE_TEXTS[2]])
    assert batch["input_ids"].shape == (1, 4)


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_pooled_vector_does_not_depend_on_padding(bert_folder, pooling):
    encoder = build_encoder(NAME, model=str(bert_folder), pooling=pooling).eval()
    with torch.no_grad():
        _, alone = encode(encoder, [SAMPLE_TEXTS[1]])
        _, batched = encode(encoder, [SAMPLE_TEXTS[2], SAMPLE_TEXTS[1], SAMPLE_TEXTS[0]])
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)


def test_mean_and_max_pooling_ignore_padding_positions(bert_folder):
    encoder = build_encoder(NAME, model=str(bert_folder), pooling="max").eval()
    with torch.no_grad():
        batch, output = encode(encoder, [SAMPLE_TEXTS[1], SAMPLE_TEXTS[2]])
    real = output.tokens[0, : int(batch["attention_mask"][0].sum())]
    torch.testing.assert_close(output.pooled[0], real.amax(dim=0))


def test_freezing_and_layer_groups(encoder):
    batch, _ = encode(encoder, SAMPLE_TEXTS)
    groups = encoder.layer_groups()
    assert len(groups) == 3  # embeddings, layer 0, layer 1
    assert any(p is encoder.model.get_input_embeddings().weight for p in groups[0].parameters())
    assert_layer_groups_cover_encoder(encoder, minimum=3)
    assert_freezing_controls_gradients(encoder.train(), batch)


def test_gradient_checkpointing_gives_the_same_gradients(encoder):
    batch, _ = encode(encoder, SAMPLE_TEXTS)
    encoder.train()
    encoder(batch).pooled.sum().backward()
    plain = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad(set_to_none=True)
    encoder.set_grad_checkpointing(True)
    encoder(batch).pooled.sum().backward()
    for before, p in zip(plain, encoder.parameters()):
        torch.testing.assert_close(p.grad, before, atol=1e-6, rtol=1e-5)


def test_export_assets_rebuilds_offline(encoder, bert_folder, tmp_path):
    params = {"model": str(bert_folder)}
    overrides = assert_export_roundtrip(NAME, params, encoder, SAMPLE_TEXTS + [None], tmp_path / "text")
    assert overrides["model"] == str((tmp_path / "text").resolve())
    assert (tmp_path / "text" / "config.json").is_file() and (tmp_path / "text" / "tokenizer.json").is_file()
    assert not (tmp_path / "text" / "model.safetensors").exists()  # weights travel in the model folder


def test_preprocessor_pickles_for_dataloader_workers(encoder):
    copy = assert_pickled_copy_preprocesses_alike(encoder.preprocessor(), SAMPLE_TEXTS[0])
    assert copy.settings() == {"max_length": 128, "pad_token_id": 0}


def test_non_text_value_is_a_sample_error(encoder):
    with pytest.raises(SampleError, match="expected text"):
        encoder.preprocessor()(42)


def test_unknown_model_name_explains_offline_hub(tmp_path):
    with pytest.raises(OSError, match="HF_HUB_OFFLINE") as caught:
        build_encoder(NAME, model=str(tmp_path / "no-such-model"))
    assert str(tmp_path / "no-such-model") in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
