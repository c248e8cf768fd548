"""Every hookspec is documented in docs/plugins.md with its exact signature and has a test
(datasette's test_plugin_hooks_are_documented / test_plugin_hooks_have_tests); the tests of the
hooks themselves are the ``test_hook_<hookspec>`` functions below."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from mmfuse import hookimpl, hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
HOOKS = sorted(name for name, fn in vars(hookspecs).items() if name.startswith("mmfuse_") and hasattr(fn, "mmfuse_spec"))


def _signature(name: str) -> str:
    annotations = getattr(hookspecs, name).__annotations__
    params = ", ".join(f"{p}: {a}" for p, a in annotations.items() if p != "return")
    return f"def {name}({params}) -> {annotations['return']}"


def _section(name: str) -> str:
    match = re.search(rf"^### `{name}`\n(.*?)(?=^#{{2,3}} |\Z)", DOCS, flags=re.S | re.M)
    assert match, f"docs/plugins.md has no '### `{name}`' section"
    return " ".join(match.group(1).split())


def test_the_hookspecs_are_found():
    assert HOOKS == sorted(f"mmfuse_register_{k}" for k in ("encoders", "fusions", "tasks", "readers", "callbacks"))


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_documented_with_its_exact_signature(name):
    section = _section(name)
    assert _signature(name) in section
    # the builder call the hookspec promises is the one the docs give
    promised = re.findall(r"called as\s+``([^`]+)``", " ".join(getattr(hookspecs, name).__doc__.split()))
    assert promised, f"the docstring of {name} does not say how the builder is called"
    for call in promised:
        assert f"`{call}`" in section, f"docs/plugins.md: {name} should say the builder is called as `{call}`"


def test_docs_name_no_hook_that_does_not_exist():
    mentioned = set(re.findall(r"\bmmfuse_[a-z_]+\b", DOCS)) - {"mmfuse_acme", "mmfuse_plugins", "mmfuse_registry"}
    assert mentioned <= set(HOOKS), sorted(mentioned - set(HOOKS))


def test_the_register_callable_is_documented_as_declared():
    block = re.search(r"```python\ndef register\((.*?)\) -> None\n```", DOCS, flags=re.S)
    assert block, "docs/plugins.md lacks the register(...) signature block"
    documented = [line.strip().rstrip(",") for line in block.group(1).strip().splitlines()]
    signature = inspect.signature(hookspecs.RegisterComponent.__call__)
    declared = []
    for param in list(signature.parameters.values())[1:]:
        text = f"{param.name}: {param.annotation}"
        if param.default is not inspect.Parameter.empty:
            text += f" = {param.default!r}".replace("''", '""')
        declared.append(text)
    assert documented == [declared[0], "*", *declared[1:]]


def test_every_hookspec_has_a_test():
    tested = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
                tested.add(node.name)
    missing = [name for name in HOOKS if not any(t == f"test_hook_{name}" or t.startswith(f"test_hook_{name}_") for t in tested)]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


# --------------------------------------------------------------------------- the hooks themselves


class PipesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    separator: str = "|"


class CounterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "counter"


class HookTestPlugin:
    """Registers one component per hook; every builder records how it was called."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[tuple, dict]] = {}
        self.callbacks: list = []

    def _record(self, key, build):
        def builder(*args, **kwargs):
            self.calls[key] = (args, kwargs)
            return build(*args, **kwargs)

        return builder

    @hookimpl
    def mmfuse_register_encoders(self, register):
        from mmfuse_plugins.vector import VectorEncoderConfig

        def build(config):
            from mmfuse_plugins.vector.encoder import build_vector_encoder

            return build_vector_encoder(config)

        register("hooktest/vector", builder=self._record("encoder", build), config=VectorEncoderConfig)

    @hookimpl
    def mmfuse_register_fusions(self, register):
        from mmfuse_plugins.fusions import ConcatFusionConfig

        def build(config, input_dims):
            from mmfuse_plugins.fusions.concat import build_concat_fusion

            return build_concat_fusion(config, input_dims)

        register("hooktest/concat", builder=self._record("fusion", build), config=ConcatFusionConfig)

    @hookimpl
    def mmfuse_register_tasks(self, register):
        from mmfuse_plugins.tasks import RegressionConfig

        def build(config, fused_dim, encoder_dims):
            from mmfuse_plugins.tasks.regression import build_regression

            return build_regression(config, fused_dim, encoder_dims)

        register("hooktest/regression", builder=self._record("task", build), config=RegressionConfig)

    @hookimpl
    def mmfuse_register_readers(self, register):
        def build(config):
            def read(path):
                for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
                    x, y, score = line.split(config.separator)
                    yield number, {"values": [float(x), float(y)], "score": float(score)}

            return read

        register("hooktest/pipes", builder=self._record("reader", build), config=PipesConfig)

    @hookimpl
    def mmfuse_register_callbacks(self, register):
        def build(config):
            from mmfuse.engine.callbacks import Callback

            plugin = self

            class Counter(Callback):
                def __init__(self):
                    self.events = []

                def on_fit_start(self, trainer):
                    self.events.append("fit_start")

                def on_train_batch_end(self, trainer, loss):
                    self.events.append("batch")

            counter = Counter()
            plugin.callbacks.append((config, counter))
            return counter

        register("hooktest/counter", builder=self._record("callback", build), config=CounterConfig)


def _recipe(registry, **extra):
    from mmfuse.recipe import parse_recipe

    raw = {
        "encoders": {"numbers": {"type": "hooktest/vector", "input_dim": 2, "hidden_dim": 4, "output_dim": 4}},
        "fusion": {"type": "hooktest/concat", "projection_dim": 4, "hidden_dims": [], "output_dim": 3},
        "tasks": {"score": {"type": "hooktest/regression", "hidden_dim": 5}},
        **extra,
    }
    return parse_recipe(raw, registry)


@pytest.fixture
def hook_plugin(mmfuse_registry):
    plugin = HookTestPlugin()
    registry = mmfuse_registry(("hooktest", plugin), installed=True)
    return plugin, registry


def test_hook_mmfuse_register_encoders(hook_plugin):
    from mmfuse.contracts import Encoder
    from mmfuse.model import build_fused_model

    plugin, registry = hook_plugin
    spec = registry.get("encoder", "hooktest/vector")
    assert spec.provenance.plugin == "hooktest" and registry.get("encoder", "hooktest/vector") is spec
    model = build_fused_model(_recipe(registry), registry)
    (config,), kwargs = plugin.calls["encoder"]
    assert kwargs == {} and config.input_dim == 2 and config.output_dim == 4
    assert isinstance(model.encoders["numbers"], Encoder)


def test_hook_mmfuse_register_fusions(hook_plugin):
    from mmfuse.model import build_fused_model

    plugin, registry = hook_plugin
    model = build_fused_model(_recipe(registry), registry)
    (config,), kwargs = plugin.calls["fusion"]
    assert kwargs == {"input_dims": {"numbers": 4}} and config.output_dim == 3
    assert model.fusion.output_dim == 3


def test_hook_mmfuse_register_tasks(hook_plugin):
    from mmfuse.model import build_fused_model

    plugin, registry = hook_plugin
    build_fused_model(_recipe(registry), registry)
    (config,), kwargs = plugin.calls["task"]
    assert kwargs == {"fused_dim": 3, "encoder_dims": {"numbers": 4}} and config.hidden_dim == 5


def test_hook_mmfuse_register_readers(hook_plugin, tmp_path):
    from mmfuse.data.manifest import read_manifest

    plugin, registry = hook_plugin
    manifest = tmp_path / "rows.txt"
    manifest.write_text("1;2;0.5\n3;4;1.5\n")
    read = read_manifest(manifest, format="hooktest/pipes", reader_options={"separator": ";"}, registry=registry)
    (config,), _ = plugin.calls["reader"]
    assert config.separator == ";"
    assert [(row.line, row.values) for row in read.rows] == [
        (1, {"values": [1.0, 2.0], "score": 0.5}),
        (2, {"values": [3.0, 4.0], "score": 1.5}),
    ]


def test_hook_mmfuse_register_callbacks(hook_plugin, tmp_path):
    from mmfuse.run import train

    plugin, registry = hook_plugin
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"numbers": [i, -i], "score": i / 8}) + "\n" for i in range(8)))
    recipe = _recipe(
        registry,
        callbacks=[{"type": "hooktest/counter", "label": "seen"}],
        data={"train": str(data), "batch_size": 4, "shuffle": False},
        trainer={"epochs": 1, "progress": "off", "tensorboard": "off"},
    )
    assert not plugin.callbacks  # parsing a recipe builds nothing
    train(recipe, run_dir=tmp_path / "run", registry=registry)
    ((config, counter),) = plugin.callbacks
    assert config.label == "seen"
    assert counter.events == ["fit_start", "batch", "batch"]
