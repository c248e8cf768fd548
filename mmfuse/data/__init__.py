"""The data side of mmfuse. This package and its torch-free modules (config, errors, manifest,
split, sources, targets) are imported by the CLI at start-up; the torch Dataset and collate
function live in ``mmfuse.data.dataset`` and ``mmfuse.data.collate``."""

from __future__ import annotations

from mmfuse.data.config import DataConfig, SplitConfig

__all__ = ["DataConfig", "SplitConfig"]
