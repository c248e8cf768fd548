"""masked_features: targets by hand per family (image, audio, video); only the hidden regions of
present samples count; masks depend on (seed, epoch, sample) only; the loss falls on the demo data
for the demo's image, audio and video encoders; joint training next to a classifier through
mmfuse.run.train, with a bit-exact resume; 2 gloo processes match one process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.data.augmentation import SampleIndex
from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import Sample
from mmfuse.model import build_fused_model
from mmfuse.recipe import parse_recipe
from mmfuse_plugins.tasks.feature_regions import AudioRegions, ImageRegions, VideoRegions, part_index
from mmfuse_plugins.tasks.masked_features import centre, choose_hidden
from tests.engine.torchrun import train_under_torchrun

SMALL_IMAGE = {"type": "image_cnn", "widths": [8, 16], "norm": "none"}


def recipe(encoder: dict, **task) -> dict:
    return {
        "encoders": {"x": encoder},
        "fusion": {"type": "mean", "output_dim": 16},
        "tasks": {"mf": {"type": "masked_features", "encoder": "x", "decoder_dim": 32, **task}},
    }


def collate(model, values, present=None, epoch=0, indices=None):
    """Preprocess ``values`` with the model's encoder 'x' and collate them (rows with present
    False lack the modality), as the training loader does."""
    preprocessor = model.encoders["x"].preprocessor()
    collator = BatchCollator({"x": preprocessor}, dict(model.tasks.items()))
    present = present or [True] * len(values)
    indices = indices or list(range(len(values)))
    samples = [
        Sample(index=SampleIndex(i, epoch), inputs={"x": preprocessor(v) if here else None}, targets={})
        for i, v, here in zip(indices, values, present)
    ]
    return collator(samples)


def images(count: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


# --------------------------------------------------------------------------- targets by hand


def test_parts_nest_so_target_cells_never_straddle_regions():
    for length in (5, 7, 16, 33):
        assert torch.equal(part_index(length, 3 * 2) // 2, part_index(length, 3))


def test_image_targets_are_mean_colours_of_cells_of_the_real_extent():
    pixels = torch.zeros(1, 1, 6, 8)
    pixels[0, 0, :4, :6] = torch.arange(24, dtype=torch.float32).view(4, 6)  # real 4 x 6, rest padding
    mask = torch.zeros(1, 6, 8, dtype=torch.bool)
    mask[0, :4, :6] = True
    layout = ImageRegions([2, 3], cells=1, channels=1)
    values, valid = layout.targets({"pixels": pixels, "pixel_mask": mask}, 0)
    image = pixels[0, 0, :4, :6]
    expected = torch.stack([image[r * 2:(r + 1) * 2, c * 2:(c + 1) * 2].mean() for r in range(2) for c in range(3)])
    assert torch.allclose(values[:, 0], expected) and valid.all()

    pixels[0, 0, 4:, :] = 99.0  # padding never counts
    pixels[0, 0, :, 6:] = -7.0
    again, _ = layout.targets({"pixels": pixels, "pixel_mask": mask}, 0)
    assert torch.equal(again, values)

    fine = ImageRegions([2, 3], cells=2, channels=1)  # 2 x 2 single pixels per region
    values, valid = fine.targets({"pixels": pixels, "pixel_mask": mask}, 0)
    assert values.shape == (6, 4)
    assert values[4].tolist() == image[2:4, 2:4].flatten().tolist()  # region (1, 1), row-major cells


def test_video_targets_are_segment_mean_colours_of_the_real_frames():
    frames = torch.rand(1, 5, 3, 4, 4)
    frame_mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last frame is padding
    layout = VideoRegions([2, 1, 2], cells=1)
    values, valid = layout.targets({"frames": frames, "frame_mask": frame_mask}, 0)
    clip = frames[0, :4]
    expected = torch.stack([
        clip[s * 2:(s + 1) * 2, :, :, c * 2:(c + 1) * 2].mean(dim=(0, 2, 3)) for s in range(2) for c in range(2)
    ])
    assert values.shape == (4, 3) and torch.allclose(values, expected, atol=1e-6) and valid.all()
    frames[0, 4] = 50.0
    assert torch.equal(layout.targets({"frames": frames, "frame_mask": frame_mask}, 0)[0], values)


def test_padding_copies_of_the_last_frame_are_hidden_with_it():
    frames = torch.rand(1, 5, 3, 4, 4)
    frames[0, 3:] = frames[0, 2]  # video_native pads short clips with the last frame, masked 0
    inputs = {"frames": frames, "frame_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    layout = VideoRegions([3, 2, 2], cells=1)
    hidden = torch.zeros(12, dtype=torch.bool)
    hidden[8] = True  # the last segment's top-left tube
    layout.hide(inputs, 0, hidden)
    assert (frames[0, 2:, :, :2, :2] == 0).all() and torch.equal(frames[0, 3], frames[0, 2])
    assert (frames[0, :2] != 0).all() and (frames[0, 2:, :, 2:] != 0).all()


def test_audio_targets_are_log_mel_energies_of_each_span():
    rate, spans = 8000, 4
    layout = AudioRegions(spans, bands=8, sample_rate=rate)
    real = 4000
    time = torch.arange(real) / rate
    wave = torch.zeros(1, 4800)  # 800 padded samples
    wave[0, 2000:3000] = torch.sin(2 * math.pi * 1000 * time[2000:3000])  # a tone in span 2 only
    wave[0, real:] = 5.0  # padding: never read
    attention = torch.zeros(1, 4800, dtype=torch.long)
    attention[0, :real] = 1
    values, valid = layout.targets({"waveform": wave, "attention_mask": attention}, 0)
    assert values.shape == (spans, 8) and valid.all()

    # by hand: frames centred every hop samples, power through torchaudio's mel filters, mean per span
    spectrum = torch.stft(wave[0, :real], layout.n_fft, layout.hop, window=torch.hann_window(layout.n_fft),
                          center=True, pad_mode="constant", return_complex=True)
    power = spectrum.abs().pow(2).T @ layout.filterbank()
    centres = torch.arange(power.shape[0]) * layout.hop
    for span in range(spans):
        inside = (centres >= span * 1000) & (centres < (span + 1) * 1000)
        assert torch.allclose(values[span], torch.log(power[inside].mean(0) + 1e-8), atol=1e-4)
    band = int(values[2].argmax())
    assert values[2, band] > values[0, band] + 10  # the tone's band is loud in its span only


# --------------------------------------------------------------------------- masking


def test_hiding_blanks_the_chosen_regions_of_present_rows_only():
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16}, image_grid=[4, 4], mask_ratio=0.25)))
    values = images(4)
    clean = collate(model, values, present=[True, True, False, True])
    batch = collate(model, values, present=[True, True, False, True])
    prepared = batch["inputs"]["x"]["pixels"]
    original = model.encoders["x"].preprocessor().collate(
        [model.encoders["x"].preprocessor()(v) if i != 2 else None for i, v in enumerate(values)]
    )["pixels"]
    weights = batch["targets"]["mf"][:, 1]
    assert torch.equal(clean["targets"]["mf"], batch["targets"]["mf"])
    assert weights[2].sum() == 0, "a row without the modality has no loss weight"
    assert torch.equal(prepared[2], original[2]), "and is not touched"
    region = (part_index(16, 4).unsqueeze(1) * 4 + part_index(16, 4)).view(-1)
    for row in (0, 1, 3):
        hidden = weights[row].any(1)
        assert int(hidden.sum()) == 4  # 25 % of 16 regions
        blank = hidden[region].view(16, 16)
        assert (prepared[row][:, blank] == 0).all()
        assert torch.equal(prepared[row][:, ~blank], original[row][:, ~blank])


def test_masks_depend_on_seed_epoch_and_sample_only():
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16})))
    values = images(6)

    def hidden(batch):
        return batch["targets"]["mf"][:, 1].any(2)

    full = hidden(collate(model, values))
    part = hidden(collate(model, values[3:], indices=[3, 4, 5]))  # other batch, other positions
    assert torch.equal(full[3:], part)
    assert not torch.equal(full, hidden(collate(model, values, epoch=1)))
    assert not torch.equal(full[0], full[1]) or not torch.equal(full[1], full[2])
    other = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16}, seed=5)))
    assert not torch.equal(full, hidden(collate(other, values)))


def test_at_least_one_region_stays_visible():
    generator = torch.Generator().manual_seed(0)
    assert choose_hidden(torch.ones(4, dtype=torch.bool), 0.99, generator).sum() == 3
    assert choose_hidden(torch.ones(4, dtype=torch.bool), 0.01, generator).sum() == 1
    assert choose_hidden(torch.tensor([True, False]), 0.5, generator).sum() == 0


def test_centred_targets_ignore_invalid_regions():
    values = torch.tensor([[1.0], [3.0], [100.0]])
    valid = torch.tensor([[True], [True], [False]])
    assert centre(values, valid).flatten().tolist() == [-1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- loss


def test_only_hidden_regions_of_present_samples_count():
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16})))
    task = model.tasks["mf"]
    batch = collate(model, images(3), present=[True, False, True])
    targets = batch["targets"]["mf"]
    predictions = torch.randn(3, 16, 12)
    loss = task.loss({"regions": predictions}, targets)
    values, weights = targets[:, 0], targets[:, 1]
    by_hand = ((predictions - values) ** 2 * weights).sum() / weights.sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)

    changed = predictions.clone()
    changed[1] += 10.0  # the absent row
    changed[0][~weights[0].bool()] -= 3.0  # visible regions of a present row
    assert task.loss({"regions": changed}, targets).item() == pytest.approx(loss.item(), rel=1e-6)
    changed[0][weights[0].bool()] += 1.0  # hidden regions do count
    assert task.loss({"regions": changed}, targets).item() != pytest.approx(loss.item(), rel=1e-3)


def test_a_row_dropped_after_masking_counts_nowhere():
    """Modality dropout (fusion.modality_dropout) narrows ``present`` after prepare_batch."""
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16})))
    model.eval()
    batch = collate(model, images(3))
    with torch.no_grad():
        full = model(batch)["mf"]
        dropped = {**batch, "present": {"x": torch.tensor([True, False, True])}}
        outputs = model(dropped)["mf"]
    assert outputs["encoded"].tolist() == [1.0, 0.0, 1.0]
    targets = batch["targets"]["mf"].clone()
    targets[1, 1] = 0.0  # as if row 1 had no image from the start
    task = model.tasks["mf"]
    expected = task.loss({"regions": full["regions"]}, targets)
    assert task.loss(outputs, batch["targets"]["mf"]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_absent_rows_input_changes_nothing():
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16})))
    model.eval()
    batch = collate(model, images(3), present=[True, False, True])
    other = collate(model, images(3), present=[True, False, True])
    other["inputs"]["x"]["pixels"][1] = torch.randn(3, 16, 16)
    with torch.no_grad():
        first = model.compute_loss(model(batch), batch["targets"])[0]
        second = model.compute_loss(model(other), other["targets"])[0]
    assert torch.equal(first, second)


def test_no_row_with_the_modality_gives_zero_loss_touching_every_parameter():
    model = build_fused_model(parse_recipe(recipe({**SMALL_IMAGE, "image_size": 16})))
    batch = collate(model, images(2), present=[False, False])
    loss = model.compute_loss(model(batch), batch["targets"])[0]
    assert loss.item() == 0.0
    loss.backward()
    for name, parameter in [*model.encoders.named_parameters(), *model.tasks.named_parameters()]:
        assert parameter.grad is not None and not parameter.grad.any(), name


def test_an_encoder_of_another_modality_and_bad_settings_are_refused_with_the_fix():
    raw = recipe({"type": "vector", "input_dim": 3, "output_dim": 8})
    with pytest.raises(ValueError, match="needs an image, audio or video encoder"):
        build_fused_model(parse_recipe(raw))
    with pytest.raises(ValueError, match="image_grid"):
        parse_recipe(recipe(SMALL_IMAGE, image_grid=[1, 1]))
    with pytest.raises(ValueError, match="decoder_heads"):
        parse_recipe(recipe(SMALL_IMAGE, decoder_heads=5))


# --------------------------------------------------------------------------- every built-in family


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    from mmfuse.testing.tiny_models import save_tiny_timm, save_tiny_videomae, save_tiny_wav2vec2

    folder = tmp_path_factory.mktemp("tiny")
    return {
        "vit": save_tiny_timm(folder / "vit", "test_vit", image_size=32),
        "resnet": save_tiny_timm(folder / "resnet", "test_resnet"),
        "wav2vec2": save_tiny_wav2vec2(folder / "wav2vec2"),
        "videomae": save_tiny_videomae(folder / "videomae", num_frames=4, image_size=32),
    }


AUDIO_8K = {"sample_rate": 8000, "max_seconds": 0.5}
#: every built-in encoder of the three families, in the form a recipe names it
BUILTIN_ENCODERS = {
    "image_timm (ViT tokens + CLS)": lambda f: {"type": "image_timm", "model": f"local-dir:{f['vit']}"},
    "image_cnn (native sizes)": lambda f: {**SMALL_IMAGE},
    "audio_mel": lambda f: {"type": "audio_mel", "model": "test_resnet", "pretrained": False, "n_mels": 32,
                            "n_fft": 256, "hop_length": 128, **AUDIO_8K},
    "audio_cnn": lambda f: {"type": "audio_cnn", "widths": [8], "n_mels": 16, "n_fft": 256, "hop_length": 128, **AUDIO_8K},
    "audio_speech": lambda f: {"type": "audio_speech", "model": str(f["wav2vec2"]), "max_seconds": 0.5},
    "sequence (audio)": lambda f: {"type": "sequence", "input": "audio", "widths": [8, 8], **AUDIO_8K},
    "video_frames": lambda f: {"type": "video_frames", "model": f"local-dir:{f['resnet']}", "num_frames": 4},
    "video_native (VideoMAE)": lambda f: {"type": "video_native", "model": str(f["videomae"]), "num_frames": 4},
}


def raw_values(modality: str, count: int) -> list:
    rng = np.random.default_rng(1)
    if modality == "image":
        from PIL import Image

        return [Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)) for i in range(count)]
    if modality == "audio":  # clips of different lengths: padding in the batch
        return [(rng.standard_normal(2000 + 1000 * i).astype(np.float32), 8000) for i in range(count)]
    return [rng.integers(0, 256, (2 + i, 32, 32, 3), dtype=np.uint8) for i in range(count)]  # short clips: padding


@pytest.mark.parametrize("name", sorted(BUILTIN_ENCODERS))
def test_every_builtin_image_audio_and_video_encoder_trains_with_it(name, tiny_folders):
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(recipe(BUILTIN_ENCODERS[name](tiny_folders))))
    values = raw_values(model.encoders["x"].modality, 3)
    batch = collate(model, values, present=[True, False, True])
    weights = batch["targets"]["mf"][:, 1]
    assert weights[0].sum() > 0 and weights[2].sum() > 0 and weights[1].sum() == 0
    model.train()
    loss = model.compute_loss(model(batch), batch["targets"])[0]
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    decoder = model.tasks["mf"].decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["x"].parameters())


# --------------------------------------------------------------------------- the demo data


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from mmfuse.demo.dataset import write_demo_dataset
    from mmfuse.testing.tiny_models import save_tiny_timm

    folder = tmp_path_factory.mktemp("demo")
    write_demo_dataset(folder / "data", train_rows=16, val_rows=8)
    save_tiny_timm(folder / "models" / "image", "test_resnet")
    return folder


#: the demo recipe's image, audio and video encoders (recipes/demo.yaml)
DEMO_ENCODERS = {
    "image": lambda demo: {"type": "image_timm", "model": f"local-dir:{demo / 'models' / 'image'}"},
    "audio": lambda demo: {
        "type": "audio_mel", "model": "test_resnet", "pretrained": False, "sample_rate": 8000, "max_seconds": 0.5,
        "n_mels": 32, "n_fft": 256, "hop_length": 128,
    },
    "video": lambda demo: {"type": "video_frames", "model": f"local-dir:{demo / 'models' / 'image'}", "num_frames": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(DEMO_ENCODERS))
def test_the_loss_falls_on_the_demo_data(family, demo):
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(recipe(DEMO_ENCODERS[family](demo), decoder_dim=64)))
    rows = [json.loads(line) for line in (demo / "data" / "train.jsonl").read_text().splitlines()][:12]
    batch = collate(model, [demo / "data" / row[family] for row in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(25):
        loss = model.compute_loss(model(batch), batch["targets"])[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def joint_recipe(demo: Path, **trainer) -> dict:
    return {
        "seed": 3,
        "data": {"train": str(demo / "data" / "train.jsonl"), "batch_size": 4, "num_workers": 0},
        "encoders": {"image": {**SMALL_IMAGE, "image_size": 32}, "audio": DEMO_ENCODERS["audio"](demo)},
        "fusion": {"type": "concat", "output_dim": 16, "dropout": 0.0},
        "tasks": {
            "label": {"type": "classification"},
            "regions": {"type": "masked_features", "encoder": "image", "weight": 0.5, "decoder_dim": 32},
        },
        "optimizer": {"lr": 0.003},
        "trainer": {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off", **trainer},
    }


@pytest.mark.slow
def test_joint_training_next_to_a_classifier_saves_and_predicts(demo, tmp_path):
    import mmfuse
    from mmfuse.run import train

    raw = joint_recipe(demo)
    raw["data"]["val"] = str(demo / "data" / "val.jsonl")
    raw["encoders"]["audio"] = {"type": "audio_cnn", "widths": [8], "norm": "none", "sample_rate": 8000,
                                "max_seconds": 0.5, "n_mels": 16, "n_fft": 256, "hop_length": 128}
    raw["tasks"]["audio_regions"] = {"type": "masked_features", "encoder": "audio", "decoder_dim": 32}
    outcome = train(parse_recipe(raw), run_dir=tmp_path / "run")
    metrics = outcome.fit.metrics
    for key in ("val/regions/loss", "val/regions/mse", "val/regions/r2", "val/audio_regions/r2", "val/label/accuracy"):
        assert key in metrics and math.isfinite(metrics[key]), key

    predictor = mmfuse.load(outcome.run_dir)
    row = json.loads((demo / "data" / "val.jsonl").read_text().splitlines()[0])
    predictions = predictor.predict([
        {"image": str(demo / "data" / row["image"]), "audio": str(demo / "data" / row["audio"])},
        {"audio": str(demo / "data" / row["audio"])},  # no image: the task predicts harmlessly
    ])
    assert predictions[0]["label"] in ("low", "medium", "high")
    assert len(predictions[0]["regions"]) == 16 and len(predictions[0]["regions"][0]) == 12

    from mmfuse.export import export_model  # the decoder exports with the model (parity checked there)

    sample = {"image": str(demo / "data" / row["image"]), "audio": str(demo / "data" / row["audio"])}
    assert export_model(outcome.run_dir, tmp_path / "model.onnx", example=[sample, sample]).is_file()


@pytest.mark.slow
def test_a_resume_mid_epoch_with_workers_is_bit_exact(demo, tmp_path):
    from mmfuse.run import train
    from mmfuse.weight_transfer import read_source_weights
    from tests.engine.stop_after import StopAfter

    raw = joint_recipe(demo)
    raw["data"]["num_workers"] = 2  # masks drawn in worker processes: they must not depend on which
    raw["encoders"].pop("audio")
    train(parse_recipe(raw), run_dir=tmp_path / "whole")
    stopped = train(parse_recipe(raw), run_dir=tmp_path / "cut", callbacks=[StopAfter(3)])
    assert stopped.fit.stop_reason == "killed_by_test" and stopped.fit.global_step == 3  # 4 batches per epoch
    train(parse_recipe(raw), resume=tmp_path / "cut")
    whole = read_source_weights(tmp_path / "whole")[1]
    resumed = read_source_weights(tmp_path / "cut")[1]
    assert whole.keys() == resumed.keys()
    for key, tensor in whole.items():
        assert torch.equal(tensor, resumed[key]), key


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(demo, tmp_path):
    from mmfuse.run import train
    from mmfuse.weight_transfer import read_source_weights

    # a third of the rows lack the image, so the processes hide different numbers of image regions:
    # only a loss divided by the count of both processes matches one process
    rows = [json.loads(line) for line in (demo / "data" / "train.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):
        row["image"], row["audio"] = str(demo / "data" / row["image"]), str(demo / "data" / row["audio"])
        if index % 3 == 0:
            del row["image"]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    raw = joint_recipe(demo)
    raw["data"] |= {"train": str(manifest), "batch_size": 8}
    raw["encoders"]["audio"] = {"type": "audio_cnn", "widths": [8], "norm": "none", "sample_rate": 8000,
                                "max_seconds": 0.5, "n_mels": 16, "n_fft": 256, "hop_length": 128}
    raw["tasks"]["audio_regions"] = {"type": "masked_features", "encoder": "audio", "decoder_dim": 32}
    raw["trainer"]["epochs"] = 1
    train(parse_recipe(raw), run_dir=tmp_path / "one")

    raw["data"]["batch_size"] = 4  # per process: the same global batches of 8
    recipe_file = tmp_path / "two.yaml"
    recipe_file.write_text(json.dumps(raw))  # JSON is YAML
    train_under_torchrun([str(recipe_file), "--run-dir", str(tmp_path / "two")], cwd=tmp_path)
    one = read_source_weights(tmp_path / "one")[1]
    two = read_source_weights(tmp_path / "two")[1]
    trained = [key for key in one if key.startswith(("encoders.", "tasks.")) and one[key].is_floating_point()]
    assert trained
    for key in trained:
        assert torch.allclose(one[key], two[key], atol=2e-5, rtol=1e-4), key
