"""The fusion-head conformance suite: :func:`check_fusion`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import BaseModel

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse.registry import ComponentSpec, Registry
from mmfuse.testing.batches import FEATURE_DIMS, random_features, select_rows, vector_values
from mmfuse.testing.harness import (
    Subject,
    assert_close,
    assert_finite,
    expect_gradients,
    resolve_subject,
)
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect
from mmfuse.testing.suite import SaveLoadValues, build_checked, check_agree, check_bf16, evaluating, run_suite

__all__ = ["check_fusion"]

Features = dict[str, EncoderOutput]
Present = dict[str, torch.Tensor]
#: rows of the batch that lack the "right" modality
ABSENT_ROWS = [1, 3]
#: what a collate function or an exported encoder may leave in absent rows and padding
GARBAGE = {"NaN": float("nan"), "1e30": 1e30}


def check_fusion(
    name_or_spec: str | ComponentSpec,
    config: BaseModel | Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    *,
    folder: str | Path | None = None,
) -> ConformanceReport:
    """Run every fusion-head check on two modalities ("left", "right") with padded token masks
    and missing samples; raise :class:`ConformanceError` listing all failures."""
    subject = resolve_subject("fusion", name_or_spec, config, registry)
    return run_suite(subject, folder, _build, _checks)


def _build(subject: Subject) -> FusionHead:
    return build_checked(subject, FusionHead, output_dim=True, input_dims=dict(FEATURE_DIMS))


def _presence(batch_size: int, absent: list[int]) -> Present:
    right = torch.ones(batch_size, dtype=torch.bool)
    right[absent] = False
    return {"left": torch.ones(batch_size, dtype=torch.bool), "right": right}


def _checks(runner: CheckRunner, fusion: FusionHead, folder: Path) -> SaveLoadValues:
    features = random_features()
    size = features["left"].pooled.shape[0]
    runner.run("forward", lambda: _check_forward(fusion, features, _presence(size, ABSENT_ROWS)))
    runner.run("gradients", lambda: _check_gradients(fusion, features, _presence(size, [])))
    # zero-initialised gates or modulations hide dependencies at init: probe a perturbed copy
    probe = _perturbed(fusion)
    runner.run("uses_every_modality", lambda: _check_uses_every_modality(probe, features, _presence(size, [])))
    runner.run("missing_modality", lambda: _check_missing_modality(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("token_mask", lambda: _check_token_mask(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("garbage_in_absent_and_padding", lambda: _check_garbage(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("batch_size_invariance", lambda: _check_batch_invariance(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("determinism", lambda: _check_determinism(fusion, features, _presence(size, ABSENT_ROWS)))
    present = _presence(size, ABSENT_ROWS)
    runner.run(
        "bf16_autocast",
        lambda: check_bf16(fusion, lambda: _output_and_square(fusion, features, present), "fused output", fusion.output_dim),
    )
    values = {"left": vector_values(4, 3, seed=1), "right": [*vector_values(3, 2, seed=2), None]}
    return values, {"probe": [0.5, -1.0, 2.0]}


def _perturbed(fusion: FusionHead, scale: float = 0.1) -> FusionHead:
    """A copy whose every parameter has random noise added."""
    probe = copy.deepcopy(fusion)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in probe.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * scale)
    return probe


def _replace(out: EncoderOutput, rows: torch.Tensor | None = None, padding_only: bool = False, seed: int = 7) -> EncoderOutput:
    """The same features with new random content: in ``rows`` only, or at padded positions only."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(out.tokens.shape, generator=generator) * 5
    pooled = torch.randn(out.pooled.shape, generator=generator) * 5
    if padding_only:
        keep = out.mask.unsqueeze(-1)
        return EncoderOutput(torch.where(keep, out.tokens, tokens), out.mask, out.pooled)
    if rows is not None:
        row_mask = torch.zeros(out.pooled.shape[0], dtype=torch.bool)
        row_mask[rows] = True
        tokens = torch.where(row_mask[:, None, None], tokens, out.tokens)
        pooled = torch.where(row_mask[:, None], pooled, out.pooled)
    return EncoderOutput(tokens, out.mask, pooled)


def _eval_forward(fusion: FusionHead, features: Features, present: Present) -> torch.Tensor:
    with evaluating(fusion):
        return fusion(features, present)


def _check_forward(fusion: FusionHead, features: Features, present: Present) -> None:
    fusion.train()
    out = fusion(features, present)
    size = features["left"].pooled.shape[0]
    expect(isinstance(out, torch.Tensor), f"forward returned {type(out).__name__}, not a Tensor")
    expect(
        tuple(out.shape) == (size, fusion.output_dim),
        f"output has shape {tuple(out.shape)}; expected [{size}, {fusion.output_dim}] (output_dim={fusion.output_dim})",
    )
    expect(out.is_floating_point(), f"output dtype {out.dtype} is not floating point")
    assert_finite(out, "fused output")


def _check_gradients(fusion: FusionHead, features: Features, present: Present) -> None:
    fusion.train()
    fusion.zero_grad(set_to_none=True)
    out = fusion(features, present)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    expect_gradients(fusion)
    fusion.zero_grad(set_to_none=True)


def _check_uses_every_modality(fusion: FusionHead, features: Features, present: Present) -> None:
    base = _eval_forward(fusion, features, present)
    for name in features:
        changed = _eval_forward(fusion, {**features, name: _replace(features[name])}, present)
        expect(
            not torch.allclose(changed, base, atol=1e-6),
            f"the fused output does not depend on modality '{name}' (new content, same output)",
        )


def _check_missing_modality(fusion: FusionHead, features: Features, present: Present) -> None:
    base = _eval_forward(fusion, features, present)
    absent = torch.tensor(ABSENT_ROWS)
    changed = _eval_forward(fusion, {**features, "right": _replace(features["right"], rows=absent)}, present)
    assert_close(
        changed[absent],
        base[absent],
        f"output of samples {ABSENT_ROWS} (modality 'right' absent, present=False) changed with the absent "
        f"modality's content; absent inputs must be masked out, never used",
        atol=1e-5,
    )
    only_left = _eval_forward(fusion, {"left": features["left"]}, {"left": present["left"]})
    expect(
        tuple(only_left.shape) == tuple(base.shape),
        f"with modality 'right' missing from the batch the output has shape {tuple(only_left.shape)}",
    )
    assert_finite(only_left, "output with modality 'right' missing from the batch")
    assert_close(
        only_left[absent],
        base[absent],
        f"output of samples {ABSENT_ROWS} differs between 'right' marked absent and 'right' missing from the batch",
        atol=1e-5,
    )


def _check_token_mask(fusion: FusionHead, features: Features, present: Present) -> None:
    base = _eval_forward(fusion, features, present)
    padded = {name: _replace(out, padding_only=True, seed=11 + i) for i, (name, out) in enumerate(features.items())}
    changed = _eval_forward(fusion, padded, present)
    assert_close(changed, base, "fused output after changing tokens at padded positions (mask=False)", atol=1e-5)


def _poisoned(features: Features, present: Present, value: float) -> Features:
    """The same features with ``value`` in every absent row (tokens and pooled) and at every
    padded token position."""
    poisoned = {}
    for name, out in features.items():
        keep = present[name]
        valid = out.mask & keep.unsqueeze(-1)
        fill = torch.full((), value, dtype=out.tokens.dtype)
        tokens = torch.where(valid.unsqueeze(-1), out.tokens, fill)
        pooled = torch.where(keep.unsqueeze(-1), out.pooled, fill)
        poisoned[name] = EncoderOutput(tokens, out.mask, pooled)
    return poisoned


def _output_and_parameter_gradients(fusion: FusionHead, features: Features, present: Present):
    fusion.eval()  # no dropout: the clean and poisoned runs must be comparable
    fusion.zero_grad(set_to_none=True)
    try:
        out = fusion(features, present)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        grads = {name: p.grad.clone() for name, p in fusion.named_parameters() if p.grad is not None}
    finally:
        fusion.zero_grad(set_to_none=True)
        fusion.train()
    return out.detach(), grads


def _check_garbage(fusion: FusionHead, features: Features, present: Present) -> None:
    """NaN or 1e30 in absent rows and padding changes neither the output nor any parameter gradient
    (a head that projects or multiplies before masking passes the other checks, yet trains on NaN)."""
    clean, clean_grads = _output_and_parameter_gradients(fusion, features, present)
    for label, value in GARBAGE.items():
        out, grads = _output_and_parameter_gradients(fusion, _poisoned(features, present, value), present)
        where = f"with {label} in absent rows {ABSENT_ROWS} of 'right' and in padded token positions"
        assert_finite(out, f"fused output {where}")
        assert_close(out, clean, f"fused output {where} (mask absent inputs with torch.where before any layer)", atol=1e-5)
        broken = sorted(name for name, grad in grads.items() if not torch.isfinite(grad).all())
        expect(
            not broken,
            f"non-finite gradients {where} in {broken[:8]}: a layer sees the absent values before they are "
            f"masked (0 * NaN is NaN in its weight gradient); replace them with torch.where first "
            f"(mmfuse.masking.zero_absent / present_pooled / present_tokens)",
        )
        for name, grad in clean_grads.items():
            assert_close(grads.get(name, torch.zeros_like(grad)), grad, f"gradient of {name} {where}", atol=1e-5)


def _check_batch_invariance(fusion: FusionHead, features: Features, present: Present) -> None:
    together = _eval_forward(fusion, features, present)
    for row in range(together.shape[0]):
        alone = _eval_forward(
            fusion, select_rows(features, [row]), {name: mask[row : row + 1] for name, mask in present.items()}
        )
        assert_close(alone[0], together[row], f"fused output of sample {row} alone vs in a batch of {together.shape[0]}")


def _check_determinism(fusion: FusionHead, features: Features, present: Present) -> None:
    first, second = _eval_forward(fusion, features, present), _eval_forward(fusion, features, present)
    check_agree([("fused output", first)], [("fused output", second)], "two eval-mode forwards")


def _output_and_square(fusion: FusionHead, features: Features, present: Present) -> tuple[torch.Tensor, torch.Tensor]:
    out = fusion(features, present)
    return out, out.float().square().mean()
