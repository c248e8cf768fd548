"""Tokenisation for token-level tasks: one text, a list of words, or a question + context pair
-> strided windows of token ids with, per token, the character offsets into the text and the
index of the word it starts. Runs in DataLoader workers; needs a fast (Rust) tokenizer."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from mmfuse.contracts import Preprocessor, SampleError

__all__ = ["TextWindowsPreprocessor", "EXTRA_KEYS"]

#: the tensors that the encoder passes on to token-level tasks as ``EncoderOutput.extras``
EXTRA_KEYS = ("offsets", "word_ids", "text_codes", "num_words")

#: fill value of offsets, word ids and text codes where there is no text
NO_TEXT = -1


class TextWindowsPreprocessor(Preprocessor):
    """A raw value -> ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) ``[W, L]`` plus:

    - ``offsets`` ``[W, L, 2]``: character span of each token in the text (the context of a
      pair; the words joined by single spaces for a word list), ``-1`` for special, question and
      padding tokens;
    - ``word_ids`` ``[W, L]``: index of the word a token starts, ``-1`` on the other tokens;
    - ``text_codes`` ``[C]``: the text's Unicode code points (so tasks can cut answers out of it);
    - ``num_words`` ``[]``: words in the whole text, before windows were dropped.
    """

    modality = "text"

    def __init__(
        self, tokenizer: Any, *, max_length: int, stride: int, max_windows: int, question_key: str, context_key: str
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"mmfuse/text_windows needs a fast tokenizer (offsets and word ids); "
                f"{type(tokenizer).__name__} is not one. Use a model with a tokenizer.json."
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.max_windows = max_windows
        self.question_key = question_key
        self.context_key = context_key
        self._blank = self("")

    # ------------------------------------------------------------------ one value

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if isinstance(value, Mapping):
            question, text = self._pair(value)
            return self._windows(question, text, words=None)
        if isinstance(value, str):
            return self._windows(None, value, words=None)
        if isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value):
            return self._windows(None, " ".join(value), words=list(value))
        raise SampleError(
            f"expected a text, a list of words or {{'{self.question_key}': ..., '{self.context_key}': ...}}, "
            f"got {type(value).__name__}: {value!r:.80}"
        )

    def _pair(self, value: Mapping[str, Any]) -> tuple[str, str]:
        question, text = value.get(self.question_key), value.get(self.context_key)
        if not isinstance(question, str) or not isinstance(text, str):
            raise SampleError(
                f"a question + context value needs string keys '{self.question_key}' and '{self.context_key}'; "
                f"got keys {sorted(map(str, value))}"
            )
        return question, text

    def _windows(self, question: str | None, text: str, words: list[str] | None) -> dict[str, Tensor]:
        first = words if words is not None else text
        options = dict(
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            is_split_into_words=words is not None,
        )
        try:
            if question is None:
                encoded = self.tokenizer(first, truncation=True, **options)
            else:
                encoded = self.tokenizer(question, first, truncation="only_second", **options)
        except Exception as exc:  # tokenizers raise plain Exceptions (a question longer than a window)
            raise SampleError(f"cannot split into windows of {self.max_length} tokens: {exc}") from exc
        text_sequence = 0 if question is None else 1
        word_starts = _word_starts(words) if words is not None else None
        windows = []
        num_words = 0
        word_first_char: dict[int, int] = {}
        for index in range(len(encoded["input_ids"])):
            sequence_ids = encoded.sequence_ids(index)
            word_ids = encoded.word_ids(index)
            in_text = [sequence == text_sequence for sequence in sequence_ids]
            offsets = [
                _text_offset(span, word, word_starts) if inside else (NO_TEXT, NO_TEXT)
                for span, word, inside in zip(encoded["offset_mapping"][index], word_ids, in_text)
            ]
            starts = []
            for (begin, _), word, inside in zip(offsets, word_ids, in_text):
                # the earliest window holding a word holds its first piece (windows only start
                # inside the previous one); a later window starting mid-word must not restart it
                first_piece = word_first_char.setdefault(word, begin) if inside and word is not None else None
                starts.append(word if first_piece is not None and begin == first_piece else NO_TEXT)
            num_words = max([num_words] + [word + 1 for word, inside in zip(word_ids, in_text) if inside and word is not None])
            if index < self.max_windows:
                window = {"input_ids": encoded["input_ids"][index], "offsets": offsets, "word_ids": starts}
                if "token_type_ids" in encoded:
                    window["token_type_ids"] = encoded["token_type_ids"][index]
                windows.append(window)
        return _stack_windows(windows, text, num_words, int(self.tokenizer.pad_token_id))

    # ------------------------------------------------------------------ a batch

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        # a missing text becomes the encoding of "" (real tokens, so attention never sees an
        # all-padding window); the presence mask excludes it downstream
        rows = [self._blank if item is None else item for item in items]
        windows = max(row["input_ids"].shape[0] for row in rows)
        length = max(row["input_ids"].shape[1] for row in rows)
        characters = max(row["text_codes"].shape[0] for row in rows)
        pad = int(self.tokenizer.pad_token_id)
        fills = {"input_ids": pad, "attention_mask": 0, "token_type_ids": 0, "offsets": NO_TEXT, "word_ids": NO_TEXT}
        batch: dict[str, Tensor] = {}
        for key, fill in fills.items():
            if key not in rows[0]:
                continue
            shape = (len(rows), windows, length, *rows[0][key].shape[2:])
            batch[key] = torch.full(shape, fill, dtype=torch.long)
            for index, row in enumerate(rows):
                count, size = row[key].shape[:2]
                batch[key][index, :count, :size] = row[key]
        batch["text_codes"] = torch.full((len(rows), characters), NO_TEXT, dtype=torch.long)
        for index, row in enumerate(rows):
            batch["text_codes"][index, : row["text_codes"].shape[0]] = row["text_codes"]
        batch["num_words"] = torch.stack([row["num_words"] for row in rows])
        return batch

    def settings(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "stride": self.stride,
            "max_windows": self.max_windows,
            "pad_token_id": int(self.tokenizer.pad_token_id),
        }


def _word_starts(words: list[str]) -> list[int]:
    """Character position of each word in ``" ".join(words)``."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return starts


def _text_offset(span: Sequence[int], word: int | None, word_starts: list[int] | None) -> tuple[int, int]:
    # with a word list, the tokenizer's offsets are inside each word; shift them into the joined text
    shift = word_starts[word] if word_starts is not None and word is not None else 0
    return (int(span[0]) + shift, int(span[1]) + shift)


def _stack_windows(windows: list[dict[str, Any]], text: str, num_words: int, pad: int) -> dict[str, Tensor]:
    length = max(1, max(len(window["input_ids"]) for window in windows))
    count = len(windows)
    out = {
        "input_ids": torch.full((count, length), pad, dtype=torch.long),
        "attention_mask": torch.zeros((count, length), dtype=torch.long),
        "offsets": torch.full((count, length, 2), NO_TEXT, dtype=torch.long),
        "word_ids": torch.full((count, length), NO_TEXT, dtype=torch.long),
    }
    if "token_type_ids" in windows[0]:
        out["token_type_ids"] = torch.zeros((count, length), dtype=torch.long)
    for index, window in enumerate(windows):
        size = len(window["input_ids"])
        # a tokenizer without special tokens gives nothing for "": keep one (pad) token attended
        out["attention_mask"][index, : max(size, 1)] = 1
        if size == 0:
            continue
        out["input_ids"][index, :size] = torch.tensor(window["input_ids"])
        out["offsets"][index, :size] = torch.tensor(window["offsets"], dtype=torch.long).reshape(size, 2)
        out["word_ids"][index, :size] = torch.tensor(window["word_ids"])
        if "token_type_ids" in out:
            out["token_type_ids"][index, :size] = torch.tensor(window["token_type_ids"])
    out["text_codes"] = torch.tensor([ord(character) for character in text], dtype=torch.long)
    out["num_words"] = torch.tensor(num_words, dtype=torch.long)
    return out
