"""The Predictor: raw samples in, the same numbers as the plain module out; missing modalities,
internal batching, threads, bad samples."""

from __future__ import annotations

import threading

import pytest
import torch

import mmfuse
from mmfuse.artifact import save
from mmfuse.contracts import SampleError
from mmfuse.model import FusedModel
from mmfuse.predict import Predictor, load
from tests.model_folder_plugin import (
    TWO_MODALITY_SAMPLES,
    VECTOR_SAMPLES,
    text_image_recipe,
    text_image_samples,
    two_modality_recipe,
    vector_recipe,
    seeded_model,
    words_registry,
    write_vocab,
)


@pytest.fixture
def vector_model():
    return seeded_model(vector_recipe(), seed=3)


@pytest.fixture
def words_model(tmp_path):
    return seeded_model(two_modality_recipe(write_vocab(tmp_path)), seed=4, registry=words_registry())


def test_outputs_match_the_module_on_a_hand_made_batch(vector_model):
    model, recipe = vector_model
    predictor = Predictor(model, recipe)
    values = torch.tensor([sample["feats"] for sample in VECTOR_SAMPLES])
    batch = {"inputs": {"feats": {"values": values}}, "present": {"feats": torch.ones(len(values), dtype=torch.bool)}}
    with torch.no_grad():
        outputs = model(batch)
        fused = model.fusion(*model.encode(batch))
    labels = ["neg", "pos", "neutral"]
    expected_labels = [labels[i] for i in outputs["label"].argmax(-1).tolist()]
    predictions = predictor.predict(VECTOR_SAMPLES)
    assert [row["label"] for row in predictions] == expected_labels
    assert [row["score"] for row in predictions] == pytest.approx(outputs["score"].squeeze(-1).tolist(), abs=1e-6)
    probabilities = predictor.predict_proba(VECTOR_SAMPLES)
    softmax = outputs["label"].softmax(-1)
    for row, expected in zip(probabilities, softmax, strict=True):
        assert list(row) == ["label"]  # regression has no probabilities
        assert list(row["label"]) == labels
        assert list(row["label"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert torch.allclose(predictor.embed(VECTOR_SAMPLES), fused, atol=1e-6)


def test_missing_modality_is_masked_not_zero_filled(words_model):
    model, recipe = words_model
    predictor = Predictor(model, recipe)
    batch = predictor.collate(TWO_MODALITY_SAMPLES)
    assert batch["present"]["text"].tolist() == [True, True, True, False, True]
    assert batch["present"]["feats"].tolist() == [True, True, False, True, False]
    # absent key and explicit None mean the same thing
    absent, explicit = {"feats": [0.0, 0.5, 2.0]}, {"feats": [0.0, 0.5, 2.0], "sentence": None}
    assert torch.equal(predictor.embed([absent]), predictor.embed([explicit]))
    # a masked modality must not act like a present all-zero one
    zeros = {"feats": [0.0, 0.0, 0.0], "sentence": "cat"}
    missing = {"sentence": "cat"}
    assert not torch.allclose(predictor.embed([zeros]), predictor.embed([missing]))
    with torch.no_grad():
        expected = model(batch)["label"].softmax(-1)
    got = torch.tensor([list(row["label"].values()) for row in predictor.predict_proba(TWO_MODALITY_SAMPLES)])
    assert torch.allclose(got, expected, atol=1e-6)


def test_internal_batching_does_not_change_results(words_model):
    model, recipe = words_model
    samples = TWO_MODALITY_SAMPLES * 3
    whole = Predictor(model, recipe, batch_size=32)
    pieces = Predictor(model, recipe, batch_size=2)
    assert pieces.predict(samples) == whole.predict(samples)
    assert torch.allclose(pieces.embed(samples), whole.embed(samples), atol=1e-6)


def _call_from_threads(call, threads: int, repeats: int, timeout: float) -> tuple[list, list[Exception]]:
    """Run ``call`` ``repeats`` times in each of ``threads`` threads at once; return every result
    and every exception raised."""
    results, errors = [], []

    def worker():
        try:
            for _ in range(repeats):
                results.append(call())
        except Exception as exc:  # returned to the test, which asserts there are none
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=timeout)
    return results, errors


def test_shared_by_threads(words_model):
    model, recipe = words_model
    predictor = Predictor(model, recipe, batch_size=2)
    expected = predictor.predict_proba(TWO_MODALITY_SAMPLES)
    results, errors = _call_from_threads(lambda: predictor.predict_proba(TWO_MODALITY_SAMPLES), 4, 15, timeout=60)
    assert not errors
    assert len(results) == 60
    for result in results:
        for got, want in zip(result, expected, strict=True):
            assert list(got["label"].values()) == pytest.approx(list(want["label"].values()), abs=1e-6)


def test_bad_samples_name_the_sample_and_column(vector_model):
    model, recipe = vector_model
    predictor = Predictor(model, recipe)
    with pytest.raises(SampleError, match=r"sample 2, column 'feats': expected 4 numbers, got 2"):
        predictor.predict([VECTOR_SAMPLES[0], VECTOR_SAMPLES[1], {"feats": [1.0, 2.0]}])
    with pytest.raises(SampleError, match=r"sample 0 has none of this model's input columns \['feats'\]; got keys \['feat'\]"):
        predictor.predict([{"feat": [1, 2, 3, 4]}])
    with pytest.raises(SampleError, match="sample 1: expected a dict"):
        predictor.predict([VECTOR_SAMPLES[0], [1, 2, 3, 4]])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Predictor(model, recipe, batch_size=0)


def test_empty_input(vector_model):
    predictor = Predictor(*vector_model)
    assert predictor.predict([]) == []
    assert predictor.predict_proba([]) == []
    assert predictor.embed([]).shape == (0, 8)


def test_mmfuse_load_gives_a_predictor_with_module_and_recipe(vector_model, tmp_path):
    model, recipe = vector_model
    folder = save(model, tmp_path / "model", recipe)
    predictor = mmfuse.load(folder, batch_size=3)
    assert isinstance(predictor, Predictor)
    assert type(predictor.module) is FusedModel
    assert predictor.recipe.tasks["label"].params.labels == ["neg", "pos", "neutral"]
    assert predictor.tasks == ["label", "score"]
    assert not predictor.module.training
    got, want = predictor.predict(VECTOR_SAMPLES), Predictor(model, recipe).predict(VECTOR_SAMPLES)
    assert [row["label"] for row in got] == [row["label"] for row in want]
    assert [row["score"] for row in got] == pytest.approx([row["score"] for row in want], abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_cpu(vector_model, tmp_path):
    model, recipe = vector_model
    folder = save(model, tmp_path / "model", recipe)
    on_gpu = load(folder, device="cuda")
    assert next(on_gpu.module.parameters()).is_cuda
    assert torch.allclose(on_gpu.embed(VECTOR_SAMPLES), Predictor(model, recipe).embed(VECTOR_SAMPLES), atol=1e-4)


@pytest.fixture(scope="module")
def text_image_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-image")
    model, recipe = seeded_model(text_image_recipe(folder), seed=7)
    return model, recipe, text_image_samples(folder), folder


def test_real_text_and_image_encoders_with_missing_modalities(text_image_model):
    model, recipe, samples, folder = text_image_model
    predictor = Predictor(model, recipe)
    batch = predictor.collate(samples)
    assert batch["present"]["text"].tolist() == [True, True, False, True, True]
    assert batch["present"]["image"].tolist() == [True, False, True, True, False]
    together = predictor.predict_proba(samples)
    for sample, row in zip(samples, together, strict=True):
        alone = predictor.predict_proba([sample])[0]  # padding to the batch's longest text changes nothing
        assert list(row["label"].values()) == pytest.approx(list(alone["label"].values()), abs=1e-5)
    reloaded = load(save(model, folder / "saved", recipe))
    assert torch.allclose(reloaded.embed(samples), predictor.embed(samples), atol=1e-6)


def test_threads_share_a_predictor_over_a_real_tokenizer(text_image_model):
    """Threads preprocess in parallel through one shared preprocessor: a real fast tokenizer must
    give every thread the right tokens (HF tokenizers can fail with 'Already borrowed')."""
    model, recipe, samples, _ = text_image_model
    predictor = Predictor(model, recipe)
    texts = [{"text": f"{'a cat sat on the mat ' * (i % 7 + 1)}"} for i in range(16)]
    expected = predictor.predict_proba(texts)
    results, errors = _call_from_threads(lambda: predictor.predict_proba(texts), 4, 10, timeout=120)
    assert not errors, errors[:1]
    assert len(results) == 40
    assert all(
        list(got["label"].values()) == pytest.approx(list(want["label"].values()), abs=1e-5)
        for result in results for got, want in zip(result, expected, strict=True)
    )
