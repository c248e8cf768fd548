"""Shared test set-up: offline hubs, one torch thread, a fresh registry per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# disk caches of preprocessed samples go to a throw-away folder, not the user's ~/.cache
if "MMFUSE_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["MMFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmfuse-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    """No registry state leaks between tests."""
    from mmfuse.plugin_host import reset_default_registry

    reset_default_registry()
    yield
    reset_default_registry()
