"""``mmfuse/ensemble``: the output is the weighted product of the present modalities'
classifiers, missing modalities are ignored, and the conformance kit passes."""

from __future__ import annotations

import pytest
import torch

from mmfuse.contracts import EncoderOutput
from mmfuse.plugin_host import load_registry
from mmfuse.testing import check_fusion


def build(**params):
    spec = load_registry().get("fusion", "mmfuse/ensemble")
    return spec.build(spec.config.model_validate({"num_classes": 4, **params}), input_dims={"a": 3, "b": 5})


def features(size: int = 5, seed: int = 0) -> dict[str, EncoderOutput]:
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, dim in (("a", 3), ("b", 5)):
        pooled = torch.randn(size, dim, generator=generator)
        result[name] = EncoderOutput(pooled.unsqueeze(1), torch.ones(size, 1, dtype=torch.bool), pooled)
    return result


def test_combines_log_probabilities_with_presence_renormalised_weights():
    head = build().eval()
    with torch.no_grad():
        head.weight_logits.copy_(torch.tensor([0.5, -0.3]))
    feats = features()
    present = {"a": torch.tensor([True, True, False, True, False]), "b": torch.tensor([True, False, True, True, False])}
    out = head(feats, present)
    log_a = torch.log_softmax(head.classifiers["a"](feats["a"].pooled), -1)
    log_b = torch.log_softmax(head.classifiers["b"](feats["b"].pooled), -1)
    w = torch.softmax(torch.tensor([0.5, -0.3]), 0)
    both = torch.log_softmax(w[0] * log_a + w[1] * log_b, -1)
    torch.testing.assert_close(out[[0, 3]], both[[0, 3]])
    torch.testing.assert_close(out[1], log_a[1], msg="only 'a' present: its classifier alone")
    torch.testing.assert_close(out[2], log_b[2], msg="only 'b' present: its classifier alone")
    torch.testing.assert_close(out[4], torch.full((4,), -torch.log(torch.tensor(4.0))), msg="none present: uniform")
    assert out.exp().sum(-1).tolist() == pytest.approx([1.0] * 5)
    assert head.last_weights[1].tolist() == [1.0, 0.0]


def test_a_missing_modality_is_ignored_whatever_its_content():
    head = build().eval()
    feats = features()
    present = {"a": torch.tensor([True] * 5), "b": torch.tensor([False, True, False, True, True])}
    base = head(feats, present)
    poisoned = dict(feats)
    pooled = feats["b"].pooled.clone()
    pooled[~present["b"]] = float("nan")
    poisoned["b"] = EncoderOutput(pooled.unsqueeze(1), feats["b"].mask, pooled)
    torch.testing.assert_close(head(poisoned, present), base)
    missing_from_batch = head({"a": feats["a"]}, {"a": present["a"]})
    torch.testing.assert_close(missing_from_batch[[0, 2]], base[[0, 2]])


def test_passes_the_conformance_kit(tmp_path):
    report = check_fusion("mmfuse/ensemble", {"num_classes": 3}, folder=tmp_path)
    assert {"missing_modality", "uses_every_modality", "batch_size_invariance"} <= set(report.passed)


def test_num_classes_is_required():
    spec = load_registry().get("fusion", "mmfuse/ensemble")
    with pytest.raises(ValueError, match="num_classes"):
        spec.config.model_validate({})
