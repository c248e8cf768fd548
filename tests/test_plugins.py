"""Plugin manager: entry points, provenance, failures, strict mode, deny list, duplicates."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel

from mmfuse import hookimpl
from mmfuse.plugin_host import PluginLoadError, load_registry
from mmfuse.registry import DuplicateComponentError, UnknownComponentError
from tests.fake_plugins import write_distribution

GOOD_PLUGIN = """
from pydantic import BaseModel
from mmfuse import hookimpl

class TabularConfig(BaseModel):
    width: int = 3

@hookimpl
def mmfuse_register_encoders(register):
    register("acme/tabular", builder="acme_tab:build", config=TabularConfig, description="tabular")

def build(config):
    raise NotImplementedError
"""

BROKEN_PLUGIN = """
import this_module_does_not_exist_anywhere
"""


def make_plugin(name: str, kind_hook: str, component: str) -> types.SimpleNamespace:
    def hook(register):
        register(component, builder=lambda config, **ctx: None, config=BaseModel)

    hook.__name__ = kind_hook
    return types.SimpleNamespace(**{kind_hook: hookimpl(hook)})


def test_builtins_arrive_through_the_entry_point_group():
    registry = load_registry()
    spec = registry.get("encoder", "vector")
    assert spec.name == "mmfuse/vector"
    assert spec.provenance.distribution == "mmfuse"
    assert spec.provenance.plugin == "vector"
    assert spec.provenance.module == "mmfuse_plugins.vector"
    assert registry.get("fusion", "mmfuse/concat").short_name == "concat"


def test_plugin_defined_in_test_is_isolated_per_registry():
    plugin = make_plugin("p", "mmfuse_register_encoders", "test/local")
    with_plugin = load_registry([("local", plugin)], entry_points=False)
    assert with_plugin.get("encoder", "local").name == "test/local"
    without = load_registry(entry_points=False)
    with pytest.raises(UnknownComponentError):
        without.get("encoder", "test/local")


def test_third_party_distribution_is_discovered_and_broken_one_reported(tmp_path, monkeypatch):
    write_distribution(tmp_path, "acme-tabular", "1.2.3", "acme_tab", GOOD_PLUGIN)
    write_distribution(tmp_path, "acme-broken", "0.0.1", "acme_broken", BROKEN_PLUGIN, ep_name="acmebroken")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    spec = registry.get("encoder", "tabular")
    assert (spec.provenance.distribution, spec.provenance.version) == ("acme-tabular", "1.2.3")
    assert registry.get("encoder", "vector")  # built-ins still load
    [failure] = registry.broken
    assert failure.distribution == "acme-broken" and failure.version == "0.0.1"
    assert failure.entry_point == "acmebroken"
    assert isinstance(failure.error, ModuleNotFoundError)
    assert "this_module_does_not_exist_anywhere" in failure.describe()


def test_unknown_component_of_broken_plugin_chains_original_error(tmp_path, monkeypatch):
    write_distribution(tmp_path, "acme-broken", "0.0.1", "acme_broken", BROKEN_PLUGIN, ep_name="acmebroken")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    with pytest.raises(UnknownComponentError) as info:
        registry.get("encoder", "acmebroken/thing")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "failed to load" in str(info.value)


def test_strict_mode_makes_a_broken_plugin_fatal(tmp_path, monkeypatch):
    write_distribution(tmp_path, "acme-broken", "0.0.1", "acme_broken", BROKEN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MMFUSE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="acme-broken"):
        load_registry()


def test_disable_list_skips_plugins(monkeypatch):
    monkeypatch.setenv("MMFUSE_DISABLE_PLUGINS", "vector, fusions")
    registry = load_registry()
    assert "mmfuse/vector" not in registry.names("encoder")
    assert "mmfuse/concat" not in registry.names("fusion")
    assert "mmfuse/classification" in registry.names("task")


def test_duplicate_name_drops_the_second_component_with_a_warning_naming_both_providers():
    first = make_plugin("a", "mmfuse_register_fusions", "dup/fuse")
    second = make_plugin("b", "mmfuse_register_fusions", "dup/fuse")
    registry = load_registry([("first", first), ("second", second)], entry_points=False)
    assert registry.get("fusion", "dup/fuse").provenance.plugin == "first"
    [dropped] = registry.broken
    assert dropped.dropped == "fusion 'dup/fuse'" and isinstance(dropped.error, DuplicateComponentError)
    assert "plugin 'first'" in dropped.describe() and "plugin 'second'" in dropped.describe()
    with pytest.raises(PluginLoadError, match="MMFUSE_STRICT_PLUGINS"):
        load_registry([("first", first), ("second", second)], entry_points=False, strict=True)


def test_ambiguous_short_alias_requires_full_name():
    one = make_plugin("a", "mmfuse_register_tasks", "one/score")
    two = make_plugin("b", "mmfuse_register_tasks", "two/score")
    registry = load_registry([("one", one), ("two", two)], entry_points=False)
    assert registry.get("task", "one/score").name == "one/score"
    with pytest.raises(UnknownComponentError, match="ambiguous"):
        registry.get("task", "score")


def test_unnamespaced_registration_is_dropped_with_a_warning():
    plugin = make_plugin("a", "mmfuse_register_encoders", "plain")
    registry = load_registry([("a", plugin)], entry_points=False)
    assert "plain" not in registry.names("encoder")
    assert "without a namespace" in registry.broken[0].describe()
    with pytest.raises(PluginLoadError, match="without a namespace"):
        load_registry([("a", plugin)], entry_points=False, strict=True)


def test_hook_that_raises_is_reported_and_others_load():
    def mmfuse_register_encoders(register):
        raise RuntimeError("boom in registration")

    bad = types.SimpleNamespace(mmfuse_register_encoders=hookimpl(mmfuse_register_encoders))
    good = make_plugin("g", "mmfuse_register_encoders", "good/enc")
    registry = load_registry([("bad", bad), ("good", good)], entry_points=False)
    assert registry.get("encoder", "good/enc")
    assert [f.entry_point for f in registry.broken] == ["bad"]
    assert "boom in registration" in str(registry.broken[0].error)


def test_builder_import_error_is_chained():
    from mmfuse.registry import ComponentLoadError

    def mmfuse_register_encoders(register):
        register("x/enc", builder="no_such_module_xyz:build")

    plugin = types.SimpleNamespace(mmfuse_register_encoders=hookimpl(mmfuse_register_encoders))
    registry = load_registry([("x", plugin)], entry_points=False)
    with pytest.raises(ComponentLoadError) as info:
        registry.get("encoder", "x/enc").load_builder()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# --------------------------------------------------------------------------- hostile third-party plugins

SHADOWING_PLUGIN = """
from mmfuse import hookimpl

@hookimpl
def mmfuse_register_fusions(register):
    register("evil/fuse", builder="evil_fusions:build")
"""

CLASHING_PLUGIN = """
from mmfuse import hookimpl

@hookimpl
def mmfuse_register_fusions(register):
    register("mmfuse/concat", builder="acme_clash:build")   # a built-in's full name
    register("mmfuse/brand_new", builder="acme_clash:build")  # the reserved namespace
    register("bare", builder="acme_clash:build")              # no namespace
    register("acme/fine", builder="acme_clash:build")         # still registered
"""


def test_entry_point_named_like_a_builtin_does_not_replace_it(tmp_path, monkeypatch):
    write_distribution(tmp_path, "evil-fusions", "0.1.0", "evil_fusions", SHADOWING_PLUGIN, ep_name="fusions")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    spec = registry.get("fusion", "concat")
    assert (spec.name, spec.provenance.distribution) == ("mmfuse/concat", "mmfuse")  # built-in heads still there
    assert "evil/fuse" not in registry.names("fusion")
    [clash] = registry.broken
    message = clash.describe()
    assert "evil-fusions 0.1.0" in message and "already the plugin of mmfuse" in message and "which is kept" in message
    monkeypatch.setenv("MMFUSE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="evil-fusions"):
        load_registry()


def test_third_party_duplicate_reserved_or_bare_names_are_dropped_naming_the_distribution(tmp_path, monkeypatch):
    write_distribution(tmp_path, "acme-clash", "2.0.0", "acme_clash", CLASHING_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert registry.get("fusion", "mmfuse/concat").provenance.distribution == "mmfuse"
    assert registry.get("fusion", "acme/fine").provenance.distribution == "acme-clash"
    assert "mmfuse/brand_new" not in registry.names("fusion") and "bare" not in registry.names("fusion")
    dropped = {failure.dropped: failure.describe() for failure in registry.broken}
    assert set(dropped) == {"fusion 'mmfuse/concat'", "fusion 'mmfuse/brand_new'", "fusion 'bare'"}
    assert all("acme-clash 2.0.0" in text for text in dropped.values())
    assert "already registered by plugin 'fusions' (mmfuse" in dropped["fusion 'mmfuse/concat'"]
    assert "MMFUSE_DISABLE_PLUGINS=acme_clash" in dropped["fusion 'mmfuse/concat'"]  # the offender, not the built-in
    with pytest.raises(UnknownComponentError) as info:  # a dropped name is not "a plugin failed to load"
        registry.get("fusion", "nothing/here")
    assert "failed to load" not in str(info.value)
    monkeypatch.setenv("MMFUSE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="acme-clash"):
        load_registry()


def test_system_exit_at_plugin_import_is_reported_naming_the_distribution(tmp_path, monkeypatch):
    write_distribution(tmp_path, "acme-quitter", "0.3.0", "acme_quitter", "import sys\nsys.exit('no GPU, bye')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert registry.get("encoder", "vector")
    [failure] = registry.broken
    assert failure.distribution == "acme-quitter" and isinstance(failure.error, SystemExit)
    assert "acme-quitter 0.3.0 failed: SystemExit: no GPU, bye" in failure.describe()


def test_system_exit_in_a_registration_hook_is_reported():
    def mmfuse_register_tasks(register):
        raise SystemExit(3)

    quitter = types.SimpleNamespace(mmfuse_register_tasks=hookimpl(mmfuse_register_tasks))
    registry = load_registry([("quitter", quitter)], entry_points=False)
    assert [f.entry_point for f in registry.broken] == ["quitter"]


def test_cli_commands_keep_working_next_to_a_clashing_plugin(tmp_path, monkeypatch, capsys):
    from mmfuse.cli import main
    from mmfuse.plugin_host import reset_default_registry

    write_distribution(tmp_path, "acme-clash", "2.0.0", "acme_clash", CLASHING_PLUGIN)
    write_distribution(tmp_path, "evil-fusions", "0.1.0", "evil_fusions", SHADOWING_PLUGIN, ep_name="fusions")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_default_registry()
    try:
        assert main(["plugins"]) == 0
        captured = capsys.readouterr()
        assert "mmfuse/concat" in captured.out and "acme-clash" in captured.out + captured.err
    finally:
        reset_default_registry()
