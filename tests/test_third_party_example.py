"""The third-party example (examples/third_party_plugin, distribution mmfuse-acme) works with
nothing but ``pip install``: a real pip install into a scratch target folder (the test venv is
left unchanged), then mmfuse finds it, trains a recipe that uses it, saves and loads the model,
and the example's own kit-based tests pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "third_party_plugin"

#: runs in a fresh process: load the trained folder, save it again with mmfuse.save, load that,
#: and print both predictions and the provenance the folder recorded
ROUND_TRIP = """
import json, sys
import mmfuse
from mmfuse.artifact import load_model
model_dir, copy_dir = sys.argv[1], sys.argv[2]
rows = [
    {"features": {"age": 66, "income": 90.0, "city": "paris"}, "signal": [1.5, 0.0, 0.2]},
    {"features": {"age": 19, "income": None, "city": "somewhere"}},
    {"signal": [-1.0, 0.3, 0.1]},
]
first = mmfuse.load(model_dir)
model, recipe = load_model(model_dir)
mmfuse.save(model, copy_dir, recipe)
second = mmfuse.load(copy_dir)
manifest = json.load(open(copy_dir + "/mmfuse.json"))
print(json.dumps({
    "first": first.predict_proba(rows),
    "second": second.predict_proba(rows),
    "labels": first.predict(rows),
    "components": {c["type"]: c.get("distribution") for c in manifest["components"]},
}))
"""


def _env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    paths = [str(site)] if site is not None else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run(args: list[str], cwd: Path, site: Path | None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """mmfuse-acme pip-installed into a scratch folder (built from a copy, so the repository
    gets no build/ or egg-info litter)."""
    root = tmp_path_factory.mktemp("acme")
    source = root / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "runs", "__pycache__"))
    target = root / "site"
    done = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        cwd=root, site=None,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "mmfuse_acme" / "tabular.py").is_file()
    assert list(target.glob("mmfuse_acme-0.1.0.dist-info/entry_points.txt"))
    return target


def test_without_the_install_the_recipe_names_the_missing_component(tmp_path):
    done = _run([sys.executable, "-m", "mmfuse", "validate", str(EXAMPLE / "recipe.yaml")], tmp_path, site=None)
    assert done.returncode == 2
    assert "acme/tabular" in done.stdout + done.stderr


def test_mmfuse_lists_the_installed_components_with_their_distribution(site, tmp_path):
    done = _run([sys.executable, "-m", "mmfuse", "plugins", "--json"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["components"]}
    for name in ("acme/tabular", "acme/max"):
        assert (rows[name]["distribution"], rows[name]["version"]) == ("mmfuse-acme", "0.1.0")


def test_a_recipe_using_the_plugin_trains_saves_and_loads(site, tmp_path):
    run_dir = tmp_path / "run"
    done = _run(
        [sys.executable, "-m", "mmfuse", "train", str(EXAMPLE / "recipe.yaml"), "trainer.epochs=2",
         "--run-dir", str(run_dir)],
        tmp_path, site,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (run_dir / "model" / "model.safetensors").is_file()

    done = _run([sys.executable, "-c", ROUND_TRIP, str(run_dir / "model"), str(tmp_path / "copy")], tmp_path, site)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["components"]["acme/tabular"] == "mmfuse-acme"
    assert result["components"]["acme/max"] == "mmfuse-acme"
    assert [row["label"] for row in result["labels"]] and {row["label"] for row in result["labels"]} <= {"yes", "no"}
    for first, second in zip(result["first"], result["second"]):
        assert set(first["label"]) == {"yes", "no"}
        assert first["label"] == pytest.approx(second["label"], abs=1e-6)
        assert sum(first["label"].values()) == pytest.approx(1.0, abs=1e-5)


def test_the_examples_own_tests_pass_against_the_installed_package(site, tmp_path):
    done = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        tmp_path, site, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout
