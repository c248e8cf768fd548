"""What is learned from the training split (``auto`` statistics, the text vocabulary) equals a
hand computation, is recorded in the resolved recipe and the model folder, and a loaded model
predicts exactly as the trained one."""

from __future__ import annotations

import json
import math

import numpy as np
import soundfile
import torch
import torchaudio
from PIL import Image

import mmfuse
from mmfuse.artifact import save
from mmfuse.run import prepare, resolved_recipe
from tests.smalldata.conftest import small_recipe


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_image_and_mel_statistics_equal_a_hand_computation(small_data, tmp_path):
    prepared = prepare(small_recipe(small_data, tmp_path / "runs"))
    rows = _rows(small_data["train"])
    root = small_data["train"].parent
    pixels = np.concatenate([np.asarray(Image.open(root / r["image"]), dtype=np.float64).ravel() / 255 for r in rows])
    image = prepared.recipe.encoders["image"].params
    assert math.isclose(image.mean[0], pixels.mean(), abs_tol=1e-6)
    assert math.isclose(image.std[0], pixels.std(), abs_tol=1e-6)

    mel = torchaudio.transforms.MelSpectrogram(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    logs = []
    for r in rows:
        wave, _ = soundfile.read(root / r["audio"], dtype="float32")
        wave = torch.from_numpy(wave[: int(0.4 * 8000)])
        logs.append(torch.log(mel(wave) + 1e-6).double().flatten())  # every frame of an unpadded clip is real
    values = torch.cat(logs)
    audio = prepared.recipe.encoders["audio"].params
    assert math.isclose(audio.mel_mean, float(values.mean()), abs_tol=1e-5)
    assert math.isclose(audio.mel_std, float(values.std(unbiased=False)), abs_tol=1e-5)

    # the run's resolved recipe records the numbers, and the training inputs are standardised by them
    written = resolved_recipe(prepared.recipe)["encoders"]
    assert written["image"]["mean"] == list(image.mean) and written["audio"]["mel_std"] == audio.mel_std
    batch = prepared.collate([prepared.train[i] for i in range(len(prepared.train))])
    standardised = batch["inputs"]["image"]["pixels"]
    assert abs(float(standardised.mean())) < 1e-4 and abs(float(standardised.std(unbiased=False)) - 1) < 1e-3


def test_vocabulary_is_learned_from_the_training_split_only(small_data, tmp_path):
    prepared = prepare(small_recipe(small_data, tmp_path / "runs"))
    vocabulary = prepared.model.encoders["text"].vocabulary
    train_words = {w for r in _rows(small_data["train"]) for w in r["text"].split()}
    assert set(vocabulary.tokens[2:]) == train_words
    counts = [sum(r["text"].split().count(t) for r in _rows(small_data["train"])) for t in vocabulary.tokens[2:]]
    assert counts == sorted(counts, reverse=True), "most frequent tokens first"
    ids = prepared.train.preprocessors["text"]("the cat zebra")["input_ids"].tolist()
    assert ids[:2] == [vocabulary.tokens.index("the"), vocabulary.tokens.index("cat")] and ids[2] == 1  # <unk>


def test_the_model_folder_predicts_exactly_like_the_trained_model(small_data, tmp_path):
    prepared = prepare(small_recipe(small_data, tmp_path / "runs"))
    model = prepared.model.eval()
    folder = save(model, tmp_path / "model", prepared.recipe)
    assert (folder / "assets" / "text" / "vocab.json").is_file()
    import yaml

    saved = yaml.safe_load((folder / "recipe.yaml").read_text())["encoders"]
    pinned = [saved["image"]["mean"], saved["image"]["std"], saved["audio"]["mel_mean"], saved["audio"]["mel_std"]]
    assert "auto" not in pinned, "learned statistics must be pinned in the model folder"
    samples = [{k: str(small_data["val"].parent / v) if k in ("image", "audio") else v for k, v in r.items()}
               for r in _rows(small_data["val"])]
    predictor = mmfuse.load(folder)
    reference = mmfuse.predict.Predictor(model, prepared.recipe)
    for name in ("image", "audio", "text"):
        assert predictor.preprocessors[name].settings() == reference.preprocessors[name].settings()
    expected, actual = reference.predict_proba(samples), predictor.predict_proba(samples)
    for left, right in zip(expected, actual):
        for label, value in left["label"].items():
            assert math.isclose(value, right["label"][label], rel_tol=1e-6, abs_tol=1e-7)
