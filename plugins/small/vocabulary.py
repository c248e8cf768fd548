"""A vocabulary learned from the training split: word or character tokens, the most frequent
first (ties in alphabetical order, so the same data always gives the same ids). Plain Python."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

__all__ = ["PAD", "UNK", "Vocabulary", "tokenize"]

PAD, UNK = "<pad>", "<unk>"
_WORDS = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str, level: str, lowercase: bool) -> list[str]:
    """Words and punctuation marks (``level="word"``), or characters (``"char"``, spaces kept)."""
    if lowercase:
        text = text.lower()
    return _WORDS.findall(text) if level == "word" else list(text)


class Vocabulary:
    """Token <-> id; id 0 is padding, id 1 the unknown token. Filled in place by :meth:`learn`
    (the encoder and its preprocessor share one instance)."""

    def __init__(self, level: str, lowercase: bool, tokens: Iterable[str] = ()) -> None:
        self.level = level
        self.lowercase = lowercase
        self.tokens: list[str] = []
        self._ids: dict[str, int] = {}
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Iterable[str]) -> None:
        self.tokens = [PAD, UNK] + [t for t in dict.fromkeys(tokens) if t not in (PAD, UNK)]
        self._ids = {token: index for index, token in enumerate(self.tokens)}

    @property
    def learned(self) -> bool:
        return len(self.tokens) > 2

    def __len__(self) -> int:
        return len(self.tokens)

    def learn(self, texts: Iterable[str], max_size: int, min_count: int = 1) -> None:
        """Keep the ``max_size - 2`` most frequent tokens seen at least ``min_count`` times."""
        counts = Counter(token for text in texts for token in tokenize(text, self.level, self.lowercase))
        ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
        self.set_tokens(token for token, _ in ranked[: max_size - 2])

    def encode(self, text: str, max_length: int) -> list[int]:
        unknown = self._ids[UNK]
        return [self._ids.get(token, unknown) for token in tokenize(text, self.level, self.lowercase)[:max_length]]

    def save(self, path: Path) -> None:
        payload = {"level": self.level, "lowercase": self.lowercase, "tokens": self.tokens}
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(payload["level"], payload["lowercase"], payload["tokens"])
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read the vocabulary file {path}: {exc}") from exc
