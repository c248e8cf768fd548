"""Helpers that WRITE small real media files and tiny local models, for offline tests.

Nothing here downloads anything: models get random weights and are saved with the library's own
save function (``save_pretrained``, ``timm.models.save_for_hf``), so tests load them back through
the same path a user's hub name takes (``from_pretrained(folder)``, ``timm.create_model("local-dir:...")``).

Every helper takes the destination path first, creates parent folders, and returns the path it wrote
(as a ``pathlib.Path``). Import them from tests::

    from tests.media_fixtures import write_png, write_wav, write_mp4, save_tiny_bert

Media helpers (no torch needed): :func:`write_png`, :func:`write_wav`, :func:`write_mp4`,
:func:`write_corrupt_file`. Model helpers (import torch / transformers / timm lazily):
:func:`save_tiny_bert`, :func:`save_tiny_timm`, :func:`save_tiny_timm_checkpoint`,
:func:`save_tiny_wav2vec2`, :func:`save_tiny_videomae`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SAMPLE_TEXTS",
    "write_png",
    "write_wav",
    "write_mp4",
    "write_corrupt_file",
    "save_tiny_bert",
    "save_tiny_timm",
    "save_tiny_timm_checkpoint",
    "save_tiny_wav2vec2",
    "save_tiny_videomae",
]

#: sentences whose words are all in the tiny BERT vocabulary (no [UNK] pieces)
SAMPLE_TEXTS = [
    "a cat sat on the mat",
    "the dog runs",
    "a small red bird sings in the green tree at night",
]

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = sorted({word for text in SAMPLE_TEXTS for word in text.split()} | {"hello", "world", "video", "sound"})


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_png(path: str | Path, size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of ``size`` (width, height) in PIL ``mode`` ("RGB", "L", "RGBA", ...).

    The format follows the file extension (``.png``, ``.jpg``...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    width, height = size
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=None if channels != 1 else "L")
    if image.mode != mode:
        image = image.convert(mode)
    path = _prepare(path)
    image.save(path)
    return path


def write_wav(
    path: str | Path,
    seconds: float = 0.5,
    sample_rate: int = 16000,
    channels: int = 1,
    frequency: float = 440.0,
    seed: int = 0,
) -> Path:
    """A sine tone plus a little noise, ``channels`` channels at ``sample_rate`` Hz.

    The container follows the extension (``.wav``, ``.flac``, ``.ogg``), written by soundfile."""
    import soundfile

    rng = np.random.default_rng(seed)
    count = max(1, int(round(seconds * sample_rate)))
    time = np.arange(count, dtype=np.float64) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * frequency * time)
    wave = np.stack([tone * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    wave = (wave + 0.01 * rng.standard_normal(wave.shape)).astype(np.float32)
    path = _prepare(path)
    soundfile.write(str(path), wave if channels > 1 else wave[:, 0], sample_rate)
    return path


def write_mp4(
    path: str | Path,
    num_frames: int = 8,
    size: tuple[int, int] = (32, 32),
    fps: int = 8,
    seed: int = 0,
) -> Path:
    """An H.264 (yuv420p) video of ``num_frames`` random frames of ``size`` (width, height), via PyAV.

    Each frame has a distinct mean brightness (frame i is brighter than frame i-1), so tests can
    tell which frames a sampler picked."""
    import av

    rng = np.random.default_rng(seed)
    width, height = size
    path = _prepare(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            base = int(20 + 200 * index / max(1, num_frames - 1))
            noise = rng.integers(-10, 11, size=(height, width, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt_file(path: str | Path, content: bytes = b"this is not a media file\x00\x01\x02") -> Path:
    """A file with a media extension whose bytes are garbage (for corrupt-file error tests)."""
    path = _prepare(path)
    path.write_bytes(content)
    return path


def save_tiny_bert(folder: str | Path, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """A random BERT (hidden 32, 2 layers) and a WordPiece tokenizer built from a local vocab,
    both saved with ``save_pretrained`` into ``folder``; load with ``AutoModel.from_pretrained``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'")
    vocab = _SPECIAL_TOKENS + _WORDS + letters + [f"##{c}" for c in letters]
    tokenizer = BertTokenizerFast(
        vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True, model_max_length=64
    )
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    _seeded()
    BertModel(config).save_pretrained(folder)
    return folder


def save_tiny_timm(folder: str | Path, model_name: str = "test_vit", img_size: int = 32) -> Path:
    """A random tiny timm model saved with ``timm.models.save_for_hf`` (config.json + safetensors).

    Load it like a hub model: ``timm.create_model(f"local-dir:{folder}", pretrained=True)``; its
    pretrained config (input size ``img_size``, mean/std) travels in config.json."""
    import timm
    from timm.models import save_for_hf

    folder = Path(folder)
    _seeded()
    kwargs: dict[str, Any] = {"num_classes": 0}
    if "vit" in model_name:
        kwargs["img_size"] = img_size
    model = timm.create_model(model_name, **kwargs)
    save_for_hf(model, str(folder), safe_serialization=True, data_config={"input_size": (3, img_size, img_size)})
    return folder


def save_tiny_timm_checkpoint(path: str | Path, model_name: str = "test_resnet") -> Path:
    """The state dict of a random ``model_name`` timm model (no classifier) saved as a checkpoint
    file (``.safetensors`` or ``.pth``, by extension); load with
    ``timm.create_model(model_name, checkpoint_path=path, num_classes=0)``."""
    import timm
    import torch

    path = _prepare(path)
    _seeded()
    model = timm.create_model(model_name, num_classes=0)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def save_tiny_wav2vec2(folder: str | Path, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """A random wav2vec2 (transformers, hidden 32, 2 layers, 16 kHz) and its feature extractor,
    saved with ``save_pretrained`` into ``folder``."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        vocab_size=8,
    )
    _seeded()
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder


def save_tiny_videomae(folder: str | Path, num_frames: int = 4, image_size: int = 32) -> Path:
    """A random VideoMAE (hidden 32, 2 layers, ``num_frames`` frames of ``image_size``) and its
    image processor, saved with ``save_pretrained`` into ``folder``."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = VideoMAEConfig(
        image_size=image_size,
        patch_size=16,
        num_frames=num_frames,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_mean_pooling=True,
    )
    _seeded()
    VideoMAEModel(config).save_pretrained(folder)
    VideoMAEImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def _seeded(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
