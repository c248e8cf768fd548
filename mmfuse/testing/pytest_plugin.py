"""pytest plugin of mmfuse.testing, loaded through the ``pytest11`` entry point.

Fixtures for plugin authors:

- ``mmfuse_registry``: a factory ``mmfuse_registry(*plugins, installed=False) -> Registry`` that
  builds a fresh registry holding only the given plugins (modules, objects, or ``(name, plugin)``
  pairs), plus the installed ones with ``installed=True``. The registry also becomes the process
  default (``mmfuse.plugin_host.get_registry()``) for the test.
- ``isolated_plugin_manager``: a fresh :class:`mmfuse.plugin_host.PluginHost` with no plugin at all
  (its pluggy manager is ``.pm``); ``register(plugin, name)`` then ``build_registry()``.
- ``tiny_inputs``: tiny raw values per modality, ``tiny_inputs("image")`` -> three PNG paths
  written into the test's temporary folder (also "text", "audio", "video", "vector" with dim=).
- ``model_folder``: a path inside the test's temporary folder for a model folder (not yet created).

This module imports neither torch nor the suites: it is loaded in every pytest session of an
environment where mmfuse is installed, so it must stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

__all__ = ["mmfuse_registry", "isolated_plugin_manager", "tiny_inputs", "model_folder"]


def _named(plugin: Any, index: int) -> tuple[str, Any]:
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin
    name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
    return name, plugin


@pytest.fixture
def mmfuse_registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Factory for a fresh registry with only the given plugins (see the module docstring)."""
    from mmfuse import plugin_host as host

    def build(*plugins: Any, installed: bool = False) -> Any:
        registry = host.load_registry([_named(p, i) for i, p in enumerate(plugins)], entry_points=installed)
        monkeypatch.setattr(host, "_default_registry", registry)
        return registry

    return build


@pytest.fixture
def isolated_plugin_manager() -> Any:
    """A fresh plugin host that has loaded nothing (no entry points, no built-ins)."""
    from mmfuse.plugin_host import PluginHost

    return PluginHost(strict=True, disabled=())


@pytest.fixture
def tiny_inputs(tmp_path: Path) -> Callable[..., list[Any]]:
    """``tiny_inputs(modality, dim=None)`` -> three raw values (files go under tmp_path)."""
    from mmfuse.testing.samples import sample_values

    def values(modality: str, *, dim: int | None = None) -> list[Any]:
        return sample_values(modality, tmp_path / "tiny_inputs", dim=dim)

    return values


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """Where a test saves a model folder (``mmfuse.artifact.save`` creates it)."""
    return tmp_path / "model"
