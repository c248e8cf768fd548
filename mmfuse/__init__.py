"""mmfuse: compose multimodal models from plugins; train them with one engine.

Importing ``mmfuse`` is cheap (no torch); ``mmfuse.load`` / ``mmfuse.save`` import it on use.
"""

from __future__ import annotations

from typing import Any

from mmfuse.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "load", "save", "load_recipe", "build_fused_model"]

_LAZY = {
    "load": ("mmfuse.predict", "load"),
    "save": ("mmfuse.artifact", "save"),
    "load_recipe": ("mmfuse.recipe", "load_recipe"),
    "build_fused_model": ("mmfuse.model", "build_fused_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
