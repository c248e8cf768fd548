"""Helpers that write throw-away plugin distributions onto sys.path for entry-point tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(root: Path, dist: str, version: str, module: str, source: str, ep_name: str | None = None) -> None:
    """A minimal installed distribution: a module plus a dist-info with an ``mmfuse`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[mmfuse]\n{ep_name or module} = {module}\n")
