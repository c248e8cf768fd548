"""A test-local text encoder whose rebuild needs a file (a word vocabulary), so it exercises
``Encoder.export_assets``; plus the recipes the model-folder tests share and a seeded builder for
them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmfuse import hookimpl
from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError, masked_mean

PLUGIN_NAME = "toywords"


class WordsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_file: str
    dim: int = 8


def read_vocab(file: str) -> list[str]:
    return [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]


class WordsPreprocessor(Preprocessor):
    modality = "text"

    def __init__(self, vocab: list[str]) -> None:
        self.index = {word: i + 2 for i, word in enumerate(vocab)}  # 0 = padding, 1 = unknown

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if not isinstance(value, str) or not value.strip():
            raise SampleError(f"expected a non-empty string, got {value!r}")
        ids = [self.index.get(word, 1) for word in value.lower().split()]
        return {"ids": torch.tensor(ids, dtype=torch.long)}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        length = max([len(item["ids"]) for item in items if item is not None] + [1])
        ids = torch.zeros(len(items), length, dtype=torch.long)
        for row, item in enumerate(items):
            if item is not None:
                ids[row, : len(item["ids"])] = item["ids"]
        return {"ids": ids}

    def settings(self) -> dict[str, Any]:
        return {"vocab_size": len(self.index), "lowercase": True}


class WordsEncoder(Encoder):
    modality = "text"

    def __init__(self, config: WordsConfig) -> None:
        super().__init__()
        self.vocab_file = config.vocab_file
        self.vocab = read_vocab(config.vocab_file)
        self.embed = nn.Embedding(len(self.vocab) + 2, config.dim, padding_idx=0)
        self.proj = nn.Linear(config.dim, config.dim)
        self.output_dim = config.dim

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        mask = inputs["ids"] > 0
        tokens = self.proj(self.embed(inputs["ids"]))
        return EncoderOutput(tokens, mask, masked_mean(tokens, mask))

    def preprocessor(self) -> WordsPreprocessor:
        return WordsPreprocessor(self.vocab)

    def export_assets(self, folder: str) -> dict[str, Any]:
        target = Path(folder) / "vocab.txt"
        shutil.copyfile(self.vocab_file, target)
        return {"vocab_file": str(target)}


class WordsPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register) -> None:
        register("toy/words", builder=WordsEncoder, config=WordsConfig)


def words_registry():
    from mmfuse.plugin_host import load_registry

    return load_registry(plugins=[(PLUGIN_NAME, WordsPlugin())])


def write_vocab(folder: Path) -> Path:
    file = folder / "vocab.txt"
    file.write_text("\n".join(["a", "cat", "dog", "sits", "runs", "on", "the", "mat", "red", "blue"]) + "\n")
    return file


def seeded_model(raw_recipe: dict[str, Any], seed: int, registry=None) -> tuple[Any, Any]:
    """``(FusedModel in eval mode, Recipe)`` built from a raw recipe after ``torch.manual_seed(seed)``."""
    from mmfuse.model import build_fused_model
    from mmfuse.recipe import parse_recipe

    recipe = parse_recipe(raw_recipe, registry)
    torch.manual_seed(seed)
    return build_fused_model(recipe, registry).eval(), recipe


def vector_recipe() -> dict[str, Any]:
    """Vector encoder + concat + classification: built-in components only."""
    return {
        "name": "vec",
        "encoders": {"feats": {"type": "vector", "input_dim": 4, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
        "tasks": {
            "label": {"type": "classification", "labels": ["neg", "pos", "neutral"]},
            "score": {"type": "regression"},
        },
    }


def two_modality_recipe(vocab_file: Path) -> dict[str, Any]:
    """Words (from a vocab file) + vector features, so one modality can be missing."""
    return {
        "name": "words-and-vector",
        "encoders": {
            "text": {"type": "toy/words", "vocab_file": str(vocab_file), "dim": 6, "column": "sentence"},
            "feats": {"type": "vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8},
        },
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
        "tasks": {"label": {"type": "classification", "labels": ["x", "y", "z"]}},
    }


TWO_MODALITY_SAMPLES = [
    {"sentence": "the cat sits on the mat", "feats": [0.1, 0.2, 0.3]},
    {"sentence": "a dog runs", "feats": [1.0, -1.0, 0.5]},
    {"sentence": "blue unknownword", "feats": None},
    {"feats": [0.0, 0.5, 2.0]},
    {"sentence": "red red red cat"},
]

VECTOR_SAMPLES = [{"feats": [float(i), float(-i), 0.5 * i, 1.0]} for i in range(7)]


def text_image_recipe(folder: Path) -> dict[str, Any]:
    """The real text_hf + image_timm encoders on tiny local models written into ``folder``."""
    from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm

    bert = save_tiny_bert(folder / "bert")
    vit = save_tiny_timm(folder / "vit")
    return {
        "name": "text-image",
        "encoders": {
            "text": {"type": "text_hf", "model": str(bert), "max_length": 16},
            "image": {"type": "image_timm", "model": f"local-dir:{vit}", "column": "picture"},
        },
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
        "tasks": {"label": {"type": "classification", "labels": ["calm", "alert"]}},
    }


def text_image_samples(folder: Path) -> list[dict[str, Any]]:
    """Image paths, a PIL image, a numpy array, and samples missing one modality."""
    import numpy as np
    from PIL import Image

    from mmfuse.testing.media import write_png
    from mmfuse.testing.samples import SAMPLE_TEXTS

    first = write_png(folder / "first.png")
    second = write_png(folder / "second.png", size=(40, 20), seed=3)
    return [
        {"text": SAMPLE_TEXTS[0], "picture": str(first)},
        {"text": SAMPLE_TEXTS[2]},
        {"picture": Image.open(second)},
        {"text": "hello world", "picture": np.full((20, 30, 3), 200, dtype=np.uint8)},
        {"text": SAMPLE_TEXTS[1], "picture": None},
    ]


def reseal(folder: Path) -> None:
    """Record the current digest of every file in the folder's manifest, as ``mmfuse.save`` would:
    what someone who edits a model folder on purpose (or a test of a consistent folder of another
    model) does."""
    import json

    from mmfuse.folder_manifest import record_files

    manifest = json.loads((folder / "mmfuse.json").read_text())
    manifest["files"] = record_files(folder)
    manifest["weights"]["sha256"] = manifest["files"]["model.safetensors"]["sha256"]
    (folder / "mmfuse.json").write_text(json.dumps(manifest))
