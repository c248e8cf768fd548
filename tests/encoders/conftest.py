"""Fixtures shared by the encoder tests."""

from __future__ import annotations

import pytest

from mmfuse.testing.tiny_models import save_tiny_timm


@pytest.fixture(scope="session")
def vit_name(tmp_path_factory) -> str:
    """A tiny timm ViT (32 px) saved with ``save_for_hf``, named the way a recipe loads it."""
    return f"local-dir:{save_tiny_timm(tmp_path_factory.mktemp('vit'), 'test_vit', image_size=32)}"
