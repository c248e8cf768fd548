"""Every built-in fusion head: forward/backward with 1, 2 and 4 modalities, exclusion of missing
modalities by the mask (content of an absent modality never matters), all-missing samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse.model import build_fused_model
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.testing import parametrize_components

FUSIONS = sorted(spec.name for spec in load_registry().specs("fusion") if spec.name.startswith("mmfuse/"))
#: parameters a head cannot default, as a function of the encoder names (sorted)
REQUIRED_PARAMS = {
    "mmfuse/film": lambda names: {"target": names[0]},
    "mmfuse/ensemble": lambda names: {"num_classes": 3},
}
#: heads that combine modalities and so need at least two
MIN_MODALITIES = {"mmfuse/film": 2}
BATCH, TOKENS = 4, 3


def dims_for(count: int) -> dict[str, int]:
    return {f"m{i}": 3 + i for i in range(count)}


def build(name: str, input_dims: dict[str, int], **params) -> FusionHead:
    spec = load_registry().get("fusion", name)
    required = REQUIRED_PARAMS.get(name, lambda names: {})(sorted(input_dims))
    config = spec.config.model_validate({**required, **params})
    head = spec.build(config, input_dims=input_dims)
    assert isinstance(head, FusionHead)
    return head


def make_features(input_dims: dict[str, int], seed: int = 0) -> dict[str, EncoderOutput]:
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for name, dim in input_dims.items():
        tokens = torch.randn(BATCH, TOKENS, dim, generator=generator, requires_grad=True)
        mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
        mask[:, -1] = False  # one padding token per sample
        pooled = torch.randn(BATCH, dim, generator=generator, requires_grad=True)
        features[name] = EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
    return features


def presence(input_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Row 0: everything; row 1: misses the first encoder; row 2: only the last encoder;
    row 3: nothing at all."""
    names = sorted(input_dims)
    present = {name: torch.tensor([True, name != names[0], name == names[-1], False]) for name in names}
    return present


def poison(features, present, value: float) -> dict[str, EncoderOutput]:
    """The same features with ``value`` written into every absent row and every padding token."""
    poisoned = {}
    for name, output in features.items():
        absent = ~present[name]
        tokens = output.tokens.detach().clone()
        tokens[absent] = value
        tokens[~output.mask] = value
        pooled = output.pooled.detach().clone()
        pooled[absent] = value
        poisoned[name] = EncoderOutput(tokens=tokens, mask=output.mask, pooled=pooled)
    return poisoned


def randomize(head: nn.Module) -> None:
    """Random values in every parameter, so zero-initialised parts (absent embeddings, FiLM
    generator) cannot hide a leak."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def test_every_builtin_head_is_registered():
    expected = {"concat", "mean", "sum", "gated", "attention", "transformer", "tensor", "low_rank", "film"}
    assert {name.split("/", 1)[1] for name in FUSIONS} >= expected


@pytest.mark.parametrize("name", FUSIONS)
@pytest.mark.parametrize("count", [1, 2, 4])
def test_forward_backward(name, count):
    input_dims = dims_for(count)
    if count < MIN_MODALITIES.get(name, 1):
        with pytest.raises(ValueError, match="needs a second encoder"):
            build(name, input_dims)
        return
    head = build(name, input_dims)
    features = make_features(input_dims)
    out = head(features, presence(input_dims))
    assert out.shape == (BATCH, head.output_dim)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    present_first = features[sorted(input_dims)[-1]]
    assert present_first.pooled.grad is not None or present_first.tokens.grad is not None


@pytest.mark.parametrize("name", FUSIONS)
@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("value", [math.nan, 1e30, -7.0])
def test_absent_content_never_matters(name, count, value):
    input_dims = dims_for(count)
    head = build(name, input_dims).eval()
    randomize(head)
    features, present = make_features(input_dims), presence(input_dims)
    clean = head(poison(features, present, 0.0), present)
    poisoned_features = poison(features, present, value)
    for output in poisoned_features.values():
        output.pooled.requires_grad_(True)
        output.tokens.requires_grad_(True)
    poisoned = head(poisoned_features, present)
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=1e-6)
    poisoned.square().sum().backward()
    for parameter in head.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    for output in poisoned_features.values():
        for tensor in (output.pooled, output.tokens):
            assert tensor.grad is None or torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_absent_is_not_the_same_as_zero_features(name):
    """Masking is exclusion: a missing modality differs from a present one whose features are 0."""
    input_dims = dims_for(2)
    head = build(name, input_dims).eval()
    randomize(head)
    features = poison(make_features(input_dims), {n: torch.ones(BATCH, dtype=torch.bool) for n in input_dims}, 0.0)
    for name_ in input_dims:
        features[name_].pooled[0] = 0.0
        features[name_].tokens[0] = 0.0
    absent = {n: torch.tensor([n != "m1", True, True, True]) for n in input_dims}
    everything = {n: torch.ones(BATCH, dtype=torch.bool) for n in input_dims}
    with torch.no_grad():
        masked = head(features, absent)[0]
        zeros_present = head(features, everything)[0]
    assert not torch.allclose(masked, zeros_present, atol=1e-5)


@pytest.mark.parametrize("name", FUSIONS)
def test_all_missing_sample_is_finite(name):
    input_dims = dims_for(2)
    head = build(name, input_dims)
    features = make_features(input_dims)
    nothing = {n: torch.zeros(BATCH, dtype=torch.bool) for n in input_dims}
    out = head(poison(features, nothing, math.nan), nothing)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_encoder_missing_from_batch_counts_as_absent(name):
    """FusedModel skips an encoder whose inputs are not in the batch; heads treat it as absent."""
    input_dims = dims_for(2)
    head = build(name, input_dims).eval()
    randomize(head)
    features, present = make_features(input_dims), presence(input_dims)
    without_m0 = {"m1": features["m1"]}
    marked_absent = {**present, "m0": torch.zeros(BATCH, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(head(without_m0, {"m1": present["m1"]}), head(features, marked_absent))


@pytest.mark.parametrize("params", [{"pooling": "mean"}, {"tokens": "pooled"}, {"pooling": "mean", "tokens": "pooled"}])
def test_transformer_variants_exclude_absent_content(params):
    input_dims = dims_for(3)
    head = build("mmfuse/transformer", input_dims, d_model=16, num_heads=2, **params).eval()
    features, present = make_features(input_dims), presence(input_dims)
    clean = head(poison(features, present, 0.0), present)
    torch.testing.assert_close(head(poison(features, present, math.nan), present), clean, rtol=0, atol=1e-6)
    assert torch.isfinite(clean).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mean_and_sum_by_hand(reduction):
    input_dims = {"a": 3, "b": 2}
    head = build(f"mmfuse/{reduction}", input_dims, output_dim=4).eval()
    features = make_features(input_dims)
    present = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False, True, False])}
    with torch.no_grad():
        out = head(features, present)
        pa = features["a"].pooled @ head.modalities.projections["a"].weight.T + head.modalities.projections["a"].bias
        pb = features["b"].pooled @ head.modalities.projections["b"].weight.T + head.modalities.projections["b"].bias
    both = (pa[0] + pb[0]) / (2 if reduction == "mean" else 1)
    torch.testing.assert_close(out[0], both)
    torch.testing.assert_close(out[1], pa[1])
    torch.testing.assert_close(out[2], pb[2])
    torch.testing.assert_close(out[3], torch.zeros(4))


def test_attention_weights_ignore_absent_modalities():
    input_dims = {"a": 3, "b": 2, "c": 4}
    head = build("mmfuse/attention", input_dims, output_dim=4, attention_dim=5).eval()
    present = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False, True, False]),
               "c": torch.tensor([True, False, True, False])}
    head(make_features(input_dims), present)
    weights = head.last_weights
    expected_kept = torch.stack([present[n] for n in sorted(input_dims)], dim=1)
    assert torch.equal(weights > 0, expected_kept)
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))


def test_gated_unit_with_two_modalities_matches_gmu_formula():
    """With two modalities the softmax gate is the GMU's sigmoid gate: z*h_a + (1-z)*h_b."""
    input_dims = {"a": 3, "b": 2}
    head = build("mmfuse/gated", input_dims, output_dim=4).eval()
    features = make_features(input_dims)
    present = {n: torch.ones(BATCH, dtype=torch.bool) for n in input_dims}
    with torch.no_grad():
        out = head(features, present)
        ha = torch.tanh(head.hidden["a"](features["a"].pooled))
        hb = torch.tanh(head.hidden["b"](features["b"].pooled))
        logits = head.gate(torch.cat([ha, hb], -1)).view(BATCH, 2, 4)
        z = torch.sigmoid(logits[:, 0] - logits[:, 1])
    torch.testing.assert_close(out, z * ha + (1 - z) * hb)


def test_low_rank_equals_tensor_fusion_with_the_factorised_weight():
    """LMF is TFN with a rank-R weight: build that weight from the LMF factors and compare."""
    input_dims = {"a": 3, "b": 2, "c": 4}
    lmf = build("mmfuse/low_rank", input_dims, projection_dim=2, rank=3, output_dim=5).eval()
    tfn = build("mmfuse/tensor", input_dims, projection_dim=2, hidden_dims=[], output_dim=5).eval()
    tfn.modalities.load_state_dict(lmf.modalities.state_dict())
    fa, fb, fc = lmf.factors
    weight = torch.einsum("r,rio,rjo,rko->ijko", lmf.rank_weights, fa, fb, fc).reshape(-1, 5)
    with torch.no_grad():
        tfn.mlp[0].weight.copy_(weight.T)
        tfn.mlp[0].bias.copy_(lmf.bias)
        features, present = make_features(input_dims), presence(input_dims)
        torch.testing.assert_close(lmf(features, present), tfn(features, present), rtol=1e-4, atol=1e-5)


def test_tensor_fusion_refuses_a_huge_product():
    with pytest.raises(ValueError, match="low_rank"):
        build("mmfuse/tensor", dims_for(4), projection_dim=64)


def test_film_without_conditioning_present_is_plain_pooling():
    input_dims = {"img": 3, "txt": 2}
    head = build("mmfuse/film", input_dims, target="img", hidden_dim=6, output_dim=4).eval()
    randomize(head)
    features = make_features(input_dims)
    present = {"img": torch.ones(BATCH, dtype=torch.bool), "txt": torch.zeros(BATCH, dtype=torch.bool)}
    with torch.no_grad():
        out = head(features, present)
        tokens = head.target_projection(features["img"].tokens)
        pooled = (torch.nn.functional.gelu(tokens) * features["img"].mask.unsqueeze(-1)).sum(1) / 2
        expected = head.output(pooled)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target": "sound"}, "target 'sound' is not an encoder"),
        ({"target": "a", "conditioning": ["nope"]}, "unknown encoder"),
        ({"target": "a", "conditioning": "b"}, "never used"),
    ],
)
def test_film_role_errors_name_the_encoders(params, message):
    spec = load_registry().get("fusion", "mmfuse/film")
    with pytest.raises(ValueError, match=message):
        spec.build(spec.config.model_validate(params), input_dims={"a": 2, "b": 2, "c": 2})


def test_film_config_rejects_self_conditioning():
    spec = load_registry().get("fusion", "mmfuse/film")
    with pytest.raises(ValueError, match="cannot also condition itself"):
        spec.config.model_validate({"target": "a", "conditioning": ["a", "b"]})


@pytest.mark.parametrize("fusion", [{"type": "film", "target": "left"}, {"type": "lmf", "rank": 2}, {"type": "gmu"}])
def test_heads_build_from_a_recipe(fusion):
    registry = load_registry()
    recipe = parse_recipe(
        {
            "encoders": {"left": {"type": "vector", "input_dim": 3}, "right": {"type": "vector", "input_dim": 2}},
            "fusion": fusion,
            "tasks": {"label": {"type": "classification", "labels": ["x", "y"]}},
        },
        registry,
    )
    model = build_fused_model(recipe, registry)
    batch = {
        "inputs": {"left": {"values": torch.randn(BATCH, 3)}, "right": {"values": torch.randn(BATCH, 2)}},
        "present": {"left": torch.tensor([True, True, False, False]), "right": torch.tensor([True, False, True, False])},
    }
    logits = model(batch)["label"]
    assert logits.shape == (BATCH, 2) and torch.isfinite(logits).all()


@pytest.mark.slow
@parametrize_components(
    "fusion", namespace="mmfuse", configs={"mmfuse/film": {"target": "left"}, "mmfuse/ensemble": {"num_classes": 3}}
)
def test_builtin_heads_pass_the_plugin_conformance_kit(conformance_case, tmp_path):
    """The same checks a third-party fusion head gets from mmfuse.testing."""
    conformance_case.check(tmp_path)
