"""Torch side of ``mmfuse/text_small``: a vocabulary learned from the training split
(``Preprocessor.fit``), embeddings, then a conv, GRU or small transformer stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError
from mmfuse_plugins.small import TextSmallConfig
from mmfuse_plugins.small.conv import masked_global_pool
from mmfuse_plugins.small.vocabulary import UNK, Vocabulary

__all__ = ["SmallTextPreprocessor", "SmallTextEncoder", "build_text_small", "VOCABULARY_FILE"]

VOCABULARY_FILE = "vocab.json"


class SmallTextPreprocessor(Preprocessor):
    """str -> ``{"input_ids", "attention_mask"}`` through the shared :class:`Vocabulary`; ``fit``
    learns the vocabulary from the training texts; collate right-pads with id 0."""

    modality = "text"

    def __init__(self, vocabulary: Vocabulary, config: TextSmallConfig) -> None:
        self.vocabulary = vocabulary
        self.config = config

    def fit(self, values: Sequence[Any]) -> dict[str, Any]:
        if self.config.vocabulary is not None or self.config.vocabulary_file is not None:
            return {}  # a fixed vocabulary was given
        self.vocabulary.learn((v for v in values if isinstance(v, str)), self.config.max_vocab, self.config.min_count)
        return {}  # the vocabulary travels as a file in the model folder (export_assets)

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if not isinstance(value, str):
            raise SampleError(f"expected text (a string), got {type(value).__name__}: {value!r:.80}")
        ids = self.vocabulary.encode(value, self.config.max_length) or [self.vocabulary.tokens.index(UNK)]
        ids_tensor = torch.tensor(ids, dtype=torch.long)
        return {"input_ids": ids_tensor, "attention_mask": torch.ones_like(ids_tensor)}

    @property
    def augmentation_enabled(self) -> bool:
        return self.config.augment is not None and self.config.augment.token_dropout > 0

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if not self.augmentation_enabled:
            return tensors
        from mmfuse.augment.text import drop_tokens

        ids = drop_tokens(tensors["input_ids"], self.config.augment.token_dropout, 1, (), generator)
        return {**tensors, "input_ids": ids}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        rows = [self("") if item is None else item for item in items]
        length = max(row["input_ids"].shape[0] for row in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for index, row in enumerate(rows):
            count = row["input_ids"].shape[0]
            ids[index, :count] = row["input_ids"]
            mask[index, :count] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def cache_identity(self) -> dict[str, Any]:
        """The learned vocabulary's digest: cached token ids are only valid for the same vocabulary."""
        import hashlib

        text = "\n".join(self.vocabulary.tokens).encode()
        return {"vocabulary": hashlib.blake2b(text, digest_size=12).hexdigest()}

    def settings(self) -> dict[str, Any]:
        return {"level": self.vocabulary.level, "lowercase": self.vocabulary.lowercase,
                "max_length": self.config.max_length, "vocabulary_size": len(self.vocabulary)}


class _ConvLayers(nn.Module):
    def __init__(self, dim_in: int, config: TextSmallConfig) -> None:
        super().__init__()
        k = config.kernel_size
        self.layers = nn.ModuleList(
            nn.Conv1d(dim_in if i == 0 else config.hidden_size, config.hidden_size, k, padding=k // 2)
            for i in range(config.layers)
        )
        self.output_dim = config.hidden_size

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(1).to(x.dtype)
        h = x.transpose(1, 2) * keep
        for layer in self.layers:
            h = torch.relu(layer(h)) * keep.to(h.dtype)  # padding re-zeroed: batch-independent
        return h.transpose(1, 2)


class _GRULayers(nn.Module):
    def __init__(self, dim_in: int, config: TextSmallConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(dim_in, config.hidden_size, num_layers=config.layers, batch_first=True, bidirectional=True)
        self.output_dim = 2 * config.hidden_size

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        with torch.autocast(device_type=x.device.type, enabled=False):
            packed = pack_padded_sequence(x.float(), lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.gru(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class _TransformerLayers(nn.Module):
    def __init__(self, dim_in: int, config: TextSmallConfig) -> None:
        super().__init__()
        self.project = nn.Linear(dim_in, config.hidden_size)
        self.positions = nn.Parameter(torch.zeros(1, config.max_length, config.hidden_size))
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.heads, dim_feedforward=2 * config.hidden_size,
            dropout=config.dropout, batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.output_dim = config.hidden_size

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.project(x) + self.positions[:, : x.shape[1]]
        return self.encoder(h, src_key_padding_mask=~mask)


_BODIES = {"conv": _ConvLayers, "gru": _GRULayers, "transformer": _TransformerLayers}


class SmallTextEncoder(Encoder):
    """Tokens are the body's outputs ``[B, T, D]`` with the attention mask; pooled is their masked
    mean (or max). The embedding has ``max_vocab`` rows whatever the data, so the architecture
    never depends on the training split; only the vocabulary file does."""

    modality = "text"

    def __init__(self, config: TextSmallConfig, vocabulary: Vocabulary) -> None:
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        self.embedding = nn.Embedding(config.max_vocab, config.embed_dim, padding_idx=0)
        self.body = _BODIES[config.architecture](config.embed_dim, config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.output_dim = int(self.body.output_dim)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        mask = inputs["attention_mask"].bool()
        embedded = self.dropout(self.embedding(inputs["input_ids"]))
        tokens = self.body(embedded, mask)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_global_pool(tokens, mask, self.config.pooling))

    def preprocessor(self) -> SmallTextPreprocessor:
        # the vocabulary is shared: the preprocessor's fit fills it, export_assets saves it
        return SmallTextPreprocessor(self.vocabulary, self.config)

    def layer_groups(self) -> list[nn.Module]:
        return [self.embedding, self.body]

    def export_assets(self, folder: str) -> dict[str, Any]:
        path = Path(folder).resolve() / VOCABULARY_FILE
        self.vocabulary.save(path)
        return {"vocabulary_file": str(path), "vocabulary": None}


def build_text_small(config: TextSmallConfig) -> SmallTextEncoder:
    if config.vocabulary_file is not None:
        vocabulary = Vocabulary.load(Path(config.vocabulary_file))
    else:
        vocabulary = Vocabulary(config.level, config.lowercase, config.vocabulary or ())
    if len(vocabulary) > config.max_vocab:
        raise ValueError(
            f"the vocabulary has {len(vocabulary)} tokens but max_vocab is {config.max_vocab}; raise max_vocab"
        )
    return SmallTextEncoder(config, vocabulary)
