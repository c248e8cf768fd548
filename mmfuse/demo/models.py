"""Tiny local model folders for the demo, built with random weights and saved with each library's
own save function, so recipes load them through the same path as a hub name
(``AutoModel.from_pretrained(folder)``, ``timm.create_model("local-dir:<folder>")``). Nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_text_model", "save_image_model"]

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_text_model(folder: str | Path, words: list[str], hidden_size: int = 32, seed: int = 0) -> Path:
    """A 1-layer BERT and a WordPiece tokenizer whose vocabulary is ``words`` (whole words) plus
    letters, saved with ``save_pretrained``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys(_SPECIAL_TOKENS + sorted(words) + letters + [f"##{c}" for c in letters]))
    tokenizer = BertTokenizerFast(
        vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True, model_max_length=32
    )
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


def save_image_model(folder: str | Path, image_size: int = 32, model_name: str = "test_resnet", seed: int = 0) -> Path:
    """A tiny timm backbone saved with ``timm.models.save_for_hf`` (config.json + safetensors);
    load it as ``local-dir:<folder>``."""
    import timm
    import torch
    from timm.models import save_for_hf

    folder = Path(folder)
    torch.manual_seed(seed)
    kwargs = {"img_size": image_size} if "vit" in model_name else {}
    model = timm.create_model(model_name, num_classes=0, **kwargs)
    save_for_hf(model, str(folder), safe_serialization=True, data_config={"input_size": (3, image_size, image_size)})
    return folder
