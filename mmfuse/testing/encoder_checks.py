"""The encoder conformance suite: :func:`check_encoder`."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor
from mmfuse.registry import ComponentSpec, Registry
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
from mmfuse.testing.model_checks import artifact_available, check_frozen, check_save_load
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect
from mmfuse.testing.samples import component_samples

__all__ = ["check_encoder"]


def check_encoder(
    name_or_spec: str | ComponentSpec,
    config: BaseModel | Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    *,
    samples: Sequence[Any] | None = None,
    folder: str | Path | None = None,
) -> ConformanceReport:
    """Run every encoder check; raise :class:`ConformanceError` listing all failures.

    ``config``: the encoder's parameters (a dict or its config model; default: the config's
    defaults). ``samples``: raw input values (default: the config's ``conformance_samples(folder)``
    hint, else built-in values for the encoder's modality). ``folder``: where sample files and the
    model folder go (default: a temporary folder).
    """
    subject = resolve_subject("encoder", name_or_spec, config, registry)
    return in_folder(folder, lambda path: _run(subject, samples, path))


def _run(subject: Subject, samples: Sequence[Any] | None, folder: Path) -> ConformanceReport:
    runner = CheckRunner("encoder", subject.label)
    torch.manual_seed(0)
    runner.run("config_roundtrip", lambda: check_config_roundtrip(subject))
    encoder = runner.run("build", lambda: _build(subject))
    if encoder is None:
        return runner.finish()
    prepared = runner.run("preprocess", lambda: _preprocess(subject, encoder, samples, folder))
    if prepared is None:
        return runner.finish()
    preprocessor, values, items = prepared
    batch = preprocessor.collate(items)
    runner.run("forward", lambda: _check_forward(encoder, preprocessor, batch, len(items)))
    runner.run("gradients", lambda: _check_gradients(encoder, batch))
    registry = partner_registry(subject.spec)
    targets = [0.5 * i for i in range(len(values))]
    runner.run("frozen", lambda: check_frozen(subject, registry, values, targets))
    runner.run("padding_invariance", lambda: _check_padding_invariance(encoder, preprocessor, items))
    runner.run("determinism", lambda: _check_determinism(encoder, batch))
    runner.run("bf16_autocast", lambda: _check_bf16(encoder, batch))
    if artifact_available():
        runner.run(
            "save_load",
            lambda: check_save_load(subject, registry, {"subject": values}, {"probe": targets}, folder / "model"),
        )
    else:
        runner.skip("save_load", "mmfuse.artifact is not installed")
    return runner.finish()


def _build(subject: Subject) -> Encoder:
    encoder = subject.spec.build(subject.config)
    expect(isinstance(encoder, Encoder), f"builder returned {type(encoder).__name__}, not an mmfuse.contracts.Encoder")
    dim = getattr(encoder, "output_dim", None)
    expect(isinstance(dim, int) and dim > 0, f"output_dim must be a positive int, got {dim!r}")
    return encoder


def _preprocess(
    subject: Subject, encoder: Encoder, samples: Sequence[Any] | None, folder: Path
) -> tuple[Preprocessor, list[Any], list[dict[str, torch.Tensor]]]:
    preprocessor = encoder.preprocessor()
    expect(isinstance(preprocessor, Preprocessor), f"preprocessor() returned {type(preprocessor).__name__}")
    expect(
        preprocessor.modality == encoder.modality,
        f"preprocessor modality '{preprocessor.modality}' != encoder modality '{encoder.modality}'",
    )
    try:
        pickle.loads(pickle.dumps(preprocessor))
    except Exception as exc:
        expect(False, f"the preprocessor cannot be pickled for DataLoader workers: {type(exc).__name__}: {exc}")
    values = list(samples) if samples is not None else component_samples(subject.config, encoder.modality, folder)
    expect(len(values) >= 2, "need at least 2 sample values (conformance_samples returned fewer)")
    items = [preprocessor(value) for value in values]
    for index, item in enumerate(items):
        expect(
            isinstance(item, dict) and all(isinstance(t, torch.Tensor) for t in item.values()),
            f"preprocessor(sample {index}) must return dict[str, Tensor], got {type(item).__name__}",
        )
    return preprocessor, values, items


def _check_forward(encoder: Encoder, preprocessor: Preprocessor, batch: dict, size: int) -> None:
    encoder.train()
    out = encoder(batch)
    expect(isinstance(out, EncoderOutput), f"forward returned {type(out).__name__}, not an EncoderOutput")
    dim = encoder.output_dim
    expect(
        tuple(out.pooled.shape) == (size, dim),
        f"pooled has shape {tuple(out.pooled.shape)}; expected [{size}, {dim}] (output_dim={dim}): output_dim "
        f"must state the real feature size, fusion heads are built from it",
    )
    expect(
        out.tokens.ndim == 3 and out.tokens.shape[0] == size and out.tokens.shape[2] == dim,
        f"tokens have shape {tuple(out.tokens.shape)}; expected [{size}, T, {dim}] (output_dim={dim})",
    )
    expect(
        out.mask.dtype == torch.bool and tuple(out.mask.shape) == tuple(out.tokens.shape[:2]),
        f"mask must be a bool tensor of shape {tuple(out.tokens.shape[:2])}, got {out.mask.dtype} "
        f"{tuple(out.mask.shape)}",
    )
    expect(out.pooled.is_floating_point() and out.tokens.is_floating_point(), "tokens and pooled must be floating point")
    empty = [i for i in range(size) if not bool(out.mask[i].any())]
    expect(not empty, f"samples {empty} have no real token in the mask (every present sample needs one)")
    assert_finite(out.pooled, "pooled")
    assert_finite(out.tokens[out.mask], "tokens at real positions")


def _check_gradients(encoder: Encoder, batch: dict) -> None:
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    out = encoder(batch)
    generator = torch.Generator().manual_seed(1)
    weights_pooled = torch.randn(out.pooled.shape, generator=generator)
    weights_tokens = torch.randn(out.tokens.shape, generator=generator)
    real = out.mask.unsqueeze(-1).to(out.tokens.dtype)
    loss = (out.pooled.float() * weights_pooled).sum() + (out.tokens.float() * real * weights_tokens).sum()
    loss.backward()
    expect_gradients(encoder)
    encoder.zero_grad(set_to_none=True)


def _check_padding_invariance(encoder: Encoder, preprocessor: Preprocessor, items: list) -> None:
    encoder.eval()
    with torch.no_grad():
        together = encoder(preprocessor.collate([*items, None]))
        expect(
            together.pooled.shape[0] == len(items) + 1,
            f"collate([... , None]) must keep a row for the missing sample; got {together.pooled.shape[0]} rows "
            f"for {len(items) + 1} samples",
        )
        for index, item in enumerate(items):
            alone = encoder(preprocessor.collate([item]))
            real_alone, real_batched = int(alone.mask[0].sum()), int(together.mask[index].sum())
            expect(
                real_alone == real_batched,
                f"sample {index} has {real_alone} real tokens alone but {real_batched} in a padded batch: "
                f"the mask must mark padding False",
            )
            assert_close(
                together.pooled[index],
                alone.pooled[0],
                f"pooled output of sample {index} alone vs in a padded batch of {len(items) + 1} (padding "
                f"or batch size changes it; pool over mask=True positions only)",
            )
    encoder.train()


def _check_determinism(encoder: Encoder, batch: dict) -> None:
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(batch), encoder(batch)
    assert_close(second.pooled, first.pooled, "pooled output of two eval-mode forwards", atol=1e-6, rtol=1e-6)
    encoder.train()


def _check_bf16(encoder: Encoder, batch: dict) -> None:
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    with bf16_autocast():
        out = encoder(batch)
    expect(out.pooled.shape[-1] == encoder.output_dim, f"pooled width {out.pooled.shape[-1]} under bf16 autocast")
    assert_finite(out.pooled, "pooled under bf16 autocast")
    out.pooled.float().square().mean().backward()
    expect_finite_gradients(encoder, " under bf16 autocast")
    encoder.zero_grad(set_to_none=True)
