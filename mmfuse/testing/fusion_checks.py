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
    bf16_autocast,
    check_config_roundtrip,
    expect_finite_gradients,
    expect_gradients,
    in_folder,
    partner_registry,
    resolve_subject,
)
from mmfuse.testing.model_checks import artifact_available, check_save_load
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect

__all__ = ["check_fusion"]

Features = dict[str, EncoderOutput]
Present = dict[str, torch.Tensor]
#: rows of the batch that lack the "right" modality
ABSENT_ROWS = [1, 3]


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
    return in_folder(folder, lambda path: _run(subject, path))


def _presence(batch_size: int, absent: list[int]) -> Present:
    right = torch.ones(batch_size, dtype=torch.bool)
    right[absent] = False
    return {"left": torch.ones(batch_size, dtype=torch.bool), "right": right}


def _run(subject: Subject, folder: Path) -> ConformanceReport:
    runner = CheckRunner("fusion", subject.label)
    torch.manual_seed(0)
    runner.run("config_roundtrip", lambda: check_config_roundtrip(subject))
    fusion = runner.run("build", lambda: _build(subject))
    if fusion is None:
        return runner.finish()
    features = random_features()
    size = features["left"].pooled.shape[0]
    runner.run("forward", lambda: _check_forward(fusion, features, _presence(size, ABSENT_ROWS)))
    runner.run("gradients", lambda: _check_gradients(fusion, features, _presence(size, [])))
    # zero-initialised gates or modulations hide dependencies at init: probe a perturbed copy
    probe = _perturbed(fusion)
    runner.run("uses_every_modality", lambda: _check_uses_every_modality(probe, features, _presence(size, [])))
    runner.run("missing_modality", lambda: _check_missing_modality(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("token_mask", lambda: _check_token_mask(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("batch_size_invariance", lambda: _check_batch_invariance(probe, features, _presence(size, ABSENT_ROWS)))
    runner.run("determinism", lambda: _check_determinism(fusion, features, _presence(size, ABSENT_ROWS)))
    runner.run("bf16_autocast", lambda: _check_bf16(fusion, features, _presence(size, ABSENT_ROWS)))
    if artifact_available():
        values = {"left": vector_values(4, 3, seed=1), "right": [*vector_values(3, 2, seed=2), None]}
        runner.run(
            "save_load",
            lambda: check_save_load(
                subject, partner_registry(subject.spec), values, {"probe": [0.5, -1.0, 2.0]}, folder / "model"
            ),
        )
    else:
        runner.skip("save_load", "mmfuse.artifact is not installed")
    return runner.finish()


def _build(subject: Subject) -> FusionHead:
    fusion = subject.spec.build(subject.config, input_dims=dict(FEATURE_DIMS))
    expect(isinstance(fusion, FusionHead), f"builder returned {type(fusion).__name__}, not an mmfuse.contracts.FusionHead")
    dim = getattr(fusion, "output_dim", None)
    expect(isinstance(dim, int) and dim > 0, f"output_dim must be a positive int, got {dim!r}")
    return fusion


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
    fusion.eval()
    with torch.no_grad():
        out = fusion(features, present)
    fusion.train()
    return out


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


def _check_batch_invariance(fusion: FusionHead, features: Features, present: Present) -> None:
    together = _eval_forward(fusion, features, present)
    for row in range(together.shape[0]):
        alone = _eval_forward(
            fusion, select_rows(features, [row]), {name: mask[row : row + 1] for name, mask in present.items()}
        )
        assert_close(alone[0], together[row], f"fused output of sample {row} alone vs in a batch of {together.shape[0]}")


def _check_determinism(fusion: FusionHead, features: Features, present: Present) -> None:
    first, second = _eval_forward(fusion, features, present), _eval_forward(fusion, features, present)
    assert_close(second, first, "fused output of two eval-mode forwards", atol=1e-6, rtol=1e-6)


def _check_bf16(fusion: FusionHead, features: Features, present: Present) -> None:
    fusion.train()
    fusion.zero_grad(set_to_none=True)
    with bf16_autocast():
        out = fusion(features, present)
    expect(out.shape[-1] == fusion.output_dim, f"output width {out.shape[-1]} under bf16 autocast")
    assert_finite(out, "fused output under bf16 autocast")
    out.float().square().mean().backward()
    expect_finite_gradients(fusion, " under bf16 autocast")
    fusion.zero_grad(set_to_none=True)
