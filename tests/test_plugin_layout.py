"""Plugin families stay independent: a module of ``plugins/<family>/`` imports mmfuse core and its
own family, never another family (shared transformers/timm glue lives in mmfuse.backbones)."""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def _imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def test_no_plugin_family_imports_another():
    crossings = []
    families = [folder for folder in sorted(PLUGINS.iterdir()) if (folder / "__init__.py").is_file()]
    assert {"text_hf", "image_timm", "audio", "video", "tasks", "fusions"} <= {f.name for f in families}
    for family in families:
        for path in family.rglob("*.py"):
            for module in _imported_modules(path):
                parts = module.split(".")
                if parts[0] == "mmfuse_plugins" and len(parts) > 1 and parts[1] != family.name:
                    crossings.append(f"{path.relative_to(PLUGINS)} imports {module}")
    assert not crossings, "plugin families import each other; move shared code to mmfuse core:\n" + "\n".join(crossings)
