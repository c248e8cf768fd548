"""The wheel ships every package of both source roots (found by setup.py, not a hand-kept list),
the package data, and the modules the entry points name."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: source folder -> import name in the installed wheel
SOURCE_ROOTS = {"mmfuse": "mmfuse", "plugins": "mmfuse_plugins"}


def _source_packages() -> set[str]:
    packages = set()
    for folder, name in SOURCE_ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            packages.add(".".join([name, *relative.parts]))
    return packages


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the sources (the checkout gets no build/ litter)."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("mmfuse", "plugins", "recipes"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "-w", str(scratch / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (scratch / "dist").glob("mmfuse-*.whl")
    return zipfile.ZipFile(built)


def test_every_source_package_is_in_the_wheel(wheel):
    shipped = {name.rsplit("/", 1)[0].replace("/", ".") for name in wheel.namelist() if name.endswith("/__init__.py")}
    expected = _source_packages()
    assert {"mmfuse.testing", "mmfuse_plugins.tasks", "mmfuse_plugins.video"} <= expected
    assert shipped == expected


def test_package_data_and_entry_point_targets_ship(wheel):
    names = set(wheel.namelist())
    assert "mmfuse/demo/demo.yaml" in names
    assert wheel.read("mmfuse/demo/demo.yaml") == (ROOT / "recipes" / "demo.yaml").read_bytes()
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    for group in ("mmfuse", "pytest11"):
        for target in parser[group].values():
            module = target.split(":")[0].replace(".", "/")
            assert f"{module}.py" in names or f"{module}/__init__.py" in names, target
