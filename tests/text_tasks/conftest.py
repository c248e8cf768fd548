"""Tiny local models shared by the text-task tests (built once per session: tokenizer training and
model saving are the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_gpt2

#: words of the hand-made QA / tagging examples, whole words in the tiny BERT vocabulary
WORDS = ["the", "cat", "sat", "on", "mat", "where", "is", "john", "lives", "in", "paris", "a", "dog", "red", "ball"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", words=WORDS)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2")
