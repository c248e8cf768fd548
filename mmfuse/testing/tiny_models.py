"""Tiny local model folders with random weights, for tests, the conformance kit and the demo.

Nothing is downloaded: each model is built from a small config, seeded, and saved with its
library's own save function (``save_pretrained``, ``timm.models.save_for_hf``), so it loads back
through the same path a hub name takes (``AutoModel.from_pretrained(folder)``,
``timm.create_model("local-dir:<folder>")``). Every helper takes the destination first, creates it
and returns it as a ``pathlib.Path``. torch / transformers / timm are imported on call.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Sequence

from mmfuse.testing.samples import SAMPLE_TEXTS

__all__ = [
    "TINY_BERT_WORDS",
    "save_tiny_bert",
    "save_tiny_timm",
    "save_tiny_timm_checkpoint",
    "save_tiny_wav2vec2",
    "save_tiny_videomae",
    "save_tiny_gpt2",
]

#: whole words of the default tiny BERT vocabulary: every word of ``SAMPLE_TEXTS`` and a few more
TINY_BERT_WORDS = sorted({word for text in SAMPLE_TEXTS for word in text.split()} | {"hello", "world", "video", "sound"})

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(
    folder: str | Path,
    words: Sequence[str] = TINY_BERT_WORDS,
    *,
    characters: str = string.ascii_lowercase + "0123456789.,!?'",
    hidden_size: int = 32,
    num_layers: int = 2,
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """A random BERT and a lower-casing WordPiece tokenizer whose vocabulary is ``words`` (whole
    words) plus single ``characters`` and their ``##`` continuations, so any text made of those
    characters tokenizes without [UNK]."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = list(characters) + [f"##{c}" for c in characters]
    vocab = list(dict.fromkeys(_SPECIAL_TOKENS + sorted(words) + pieces))
    tokenizer = BertTokenizerFast(
        vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True, model_max_length=max_length
    )
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_length,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    _seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


def save_tiny_timm(folder: str | Path, model_name: str = "test_vit", image_size: int = 32, seed: int = 0) -> Path:
    """A random tiny timm model (no classifier) saved with ``timm.models.save_for_hf``
    (config.json + safetensors); its pretrained config (input size ``image_size``) travels in
    config.json. Load it as ``local-dir:<folder>``."""
    import timm
    from timm.models import save_for_hf

    folder = Path(folder)
    _seed(seed)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if "vit" in model_name:
        kwargs["img_size"] = image_size
    model = timm.create_model(model_name, **kwargs)
    save_for_hf(model, str(folder), safe_serialization=True, data_config={"input_size": (3, image_size, image_size)})
    return folder


def save_tiny_timm_checkpoint(path: str | Path, model_name: str = "test_resnet", seed: int = 0) -> Path:
    """The state dict of a random ``model_name`` timm model (no classifier) saved as a checkpoint
    file (``.safetensors`` or ``.pth``, by extension); load with
    ``timm.create_model(model_name, checkpoint_path=path, num_classes=0)``."""
    import timm
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    model = timm.create_model(model_name, num_classes=0)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def save_tiny_wav2vec2(folder: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A random wav2vec2 (16 kHz) and its feature extractor, saved with ``save_pretrained``."""
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
    _seed(seed)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder


def save_tiny_videomae(
    folder: str | Path, num_frames: int = 4, image_size: int = 32, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """A random VideoMAE (``num_frames`` frames of ``image_size``, patch 16, tubelet 2) and its
    image processor, saved with ``save_pretrained``."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = VideoMAEConfig(
        image_size=image_size,
        patch_size=16,
        num_frames=num_frames,
        tubelet_size=2,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_mean_pooling=True,
    )
    _seed(seed)
    VideoMAEModel(config).save_pretrained(folder)
    processor = VideoMAEImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(folder)
    return folder


def save_tiny_gpt2(
    folder: str | Path,
    texts: Sequence[str] = SAMPLE_TEXTS,
    *,
    vocab_size: int = 320,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """A random GPT-2 and a byte-level BPE tokenizer trained on ``texts`` (any text tokenizes:
    the 256 bytes are in the vocabulary); ``<|endoftext|>`` is its BOS / EOS token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_length,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    _seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
