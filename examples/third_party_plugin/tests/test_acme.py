"""mmfuse-acme's own tests: the mmfuse conformance kit (through its pytest plugin), plus the
behaviour that is specific to this plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mmfuse_acme
from mmfuse_acme.tabular import TabularPreprocessor
from mmfuse.contracts import SampleError
from mmfuse.testing import check_encoder, check_fusion, parametrize_components

TABULAR = {
    "numeric": [{"name": "age", "mean": 40.0, "std": 12.0}, {"name": "income", "mean": 50.0, "std": 20.0}],
    "categorical": [{"name": "city", "categories": ["paris", "lyon", "nice"]}],
    "output_dim": 16,
    "hidden_dim": 24,
}


@parametrize_components(namespace="acme", configs={"acme/tabular": TABULAR})
def test_acme_components_pass_the_mmfuse_kit(conformance_case, tmp_path):
    report = conformance_case.check(tmp_path)
    assert "save_load" in report.passed and "gradients" in report.passed


def test_components_come_from_this_distribution(mmfuse_registry):
    registry = mmfuse_registry(installed=True)
    for kind, name in (("encoder", "acme/tabular"), ("fusion", "acme/max")):
        spec = registry.get(kind, name)
        assert (spec.provenance.distribution, spec.provenance.version) == ("mmfuse-acme", mmfuse_acme.__version__)


def test_the_kit_runs_on_an_isolated_registry_with_only_this_plugin(mmfuse_registry, tmp_path):
    registry = mmfuse_registry(("acme", mmfuse_acme))
    assert [spec.name for spec in registry.all_specs()] == ["acme/tabular", "acme/max"]
    check_encoder("acme/tabular", {"numeric": [{"name": "x"}]}, registry, folder=tmp_path)
    check_fusion("acme/max", {"projection_dim": 8, "output_dim": 8}, registry, folder=tmp_path)


def test_cells_are_standardised_per_column_and_missing_ones_masked(mmfuse_registry):
    registry = mmfuse_registry(("acme", mmfuse_acme))
    spec = registry.get("encoder", "acme/tabular")
    encoder = spec.build(spec.config.model_validate(TABULAR)).eval()
    preprocessor = encoder.preprocessor()
    row = preprocessor({"age": 64, "income": None, "city": "lyon"})
    assert row["numeric"].tolist() == [2.0, 0.0]
    assert row["numeric_present"].tolist() == [True, False]
    assert row["categories"].tolist() == [2]
    assert preprocessor({"age": 1, "income": 2, "city": "berlin"})["categories"].tolist() == [0]
    out = encoder(preprocessor.collate([row]))
    assert out.mask.tolist() == [[True, False, True]]
    changed = dict(row, numeric=torch.tensor([2.0, 123.0]))  # content under a masked cell
    assert torch.allclose(encoder(preprocessor.collate([changed])).pooled, out.pooled)


def test_bad_cells_name_the_column(tiny_inputs):
    preprocessor = TabularPreprocessor(mmfuse_acme.TabularEncoderConfig.model_validate(TABULAR))
    with pytest.raises(SampleError, match="column 'age': expected a number, got 'old'"):
        preprocessor({"age": "old", "income": 1, "city": "nice"})
    with pytest.raises(SampleError, match="expects a mapping"):
        preprocessor(tiny_inputs("text")[0])


def test_a_config_without_columns_is_rejected():
    with pytest.raises(ValueError, match="at least one column"):
        mmfuse_acme.TabularEncoderConfig()


def test_registration_imports_no_torch():
    code = "import sys, mmfuse_acme; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
