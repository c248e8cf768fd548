"""mmfuse.testing: the conformance kit for plugin authors.

``check_encoder("acme/tabular")``, ``check_fusion(...)`` and ``check_task(...)`` run the checks
every built-in component passes and raise :class:`ConformanceError` listing each failed check with
the component and check name. :func:`parametrize_components` turns a set of registered components
into a parametrized pytest suite. The pytest plugin (:mod:`mmfuse.testing.pytest_plugin`, loaded
automatically through the ``pytest11`` entry point) adds fixtures. :mod:`mmfuse.testing.media`
writes small real media files and :mod:`mmfuse.testing.tiny_models` saves tiny random-weight
models that load like hub names.

Importing this package is cheap (no torch): the suites are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "check_encoder",
    "check_fusion",
    "check_task",
    "check_component",
    "ConformanceError",
    "CheckFailure",
    "ConformanceReport",
    "ConformanceCase",
    "conformance_cases",
    "parametrize_components",
    "sample_values",
    "SAMPLE_TEXTS",
    "write_png",
    "write_wav",
    "write_mp4",
    "write_corrupt_file",
    "save_tiny_bert",
    "save_tiny_timm",
    "save_tiny_timm_checkpoint",
    "save_tiny_wav2vec2",
    "save_tiny_videomae",
]

_LAZY = {
    "check_encoder": "mmfuse.testing.encoder_checks",
    "check_fusion": "mmfuse.testing.fusion_checks",
    "check_task": "mmfuse.testing.task_checks",
    "check_component": "mmfuse.testing.cases",
    "ConformanceCase": "mmfuse.testing.cases",
    "conformance_cases": "mmfuse.testing.cases",
    "parametrize_components": "mmfuse.testing.cases",
    "ConformanceError": "mmfuse.testing.report",
    "CheckFailure": "mmfuse.testing.report",
    "ConformanceReport": "mmfuse.testing.report",
    "sample_values": "mmfuse.testing.samples",
    "SAMPLE_TEXTS": "mmfuse.testing.samples",
    **{name: "mmfuse.testing.media" for name in ("write_png", "write_wav", "write_mp4", "write_corrupt_file")},
    **{
        name: "mmfuse.testing.tiny_models"
        for name in (
            "save_tiny_bert",
            "save_tiny_timm",
            "save_tiny_timm_checkpoint",
            "save_tiny_wav2vec2",
            "save_tiny_videomae",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmfuse.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
