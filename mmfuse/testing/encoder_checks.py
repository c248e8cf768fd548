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
    expect_gradients,
    partner_registry,
    resolve_subject,
)
from mmfuse.testing.model_checks import check_frozen
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect
from mmfuse.testing.samples import component_samples
from mmfuse.testing.suite import SaveLoadValues, build_checked, check_agree, check_bf16, evaluating, run_suite

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

    def checks(runner: CheckRunner, encoder: Encoder, path: Path) -> SaveLoadValues | None:
        return _checks(runner, subject, encoder, samples, path)

    return run_suite(subject, folder, lambda s: build_checked(s, Encoder, output_dim=True), checks)


def _checks(
    runner: CheckRunner, subject: Subject, encoder: Encoder, samples: Sequence[Any] | None, folder: Path
) -> SaveLoadValues | None:
    prepared = runner.run("preprocess", lambda: _preprocess(subject, encoder, samples, folder))
    if prepared is None:
        return None
    preprocessor, values, items = prepared
    batch = preprocessor.collate(items)
    runner.run("forward", lambda: _check_forward(encoder, preprocessor, batch, len(items)))
    runner.run("gradients", lambda: _check_gradients(encoder, batch))
    targets = [0.5 * i for i in range(len(values))]
    runner.run("frozen", lambda: check_frozen(subject, partner_registry(subject.spec), values, targets))
    runner.run("padding_invariance", lambda: _check_padding_invariance(encoder, preprocessor, items))
    runner.run("missing_row", lambda: _check_missing_row(encoder, preprocessor, items))
    runner.run("determinism", lambda: _check_determinism(encoder, batch))
    runner.run(
        "bf16_autocast",
        lambda: check_bf16(encoder, lambda: _pooled_and_square(encoder, batch), "pooled", encoder.output_dim),
    )
    return {"subject": values}, {"probe": targets}


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
    with evaluating(encoder):
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


def _check_missing_row(encoder: Encoder, preprocessor: Preprocessor, items: list) -> None:
    """A missing (None) row still gets a real token: encoders and exports that run every row would
    otherwise attend over nothing (NaN in a softmax) for it."""
    with evaluating(encoder):
        out = encoder(preprocessor.collate([items[0], None]))
    expect(
        bool(out.mask[1].any()),
        "collate([item, None]) gives the missing (None) row no real token (its mask is all False); give it "
        "at least one real token (e.g. the encoding of an empty value): the presence mask excludes it downstream",
    )
    assert_finite(out.pooled[1], "pooled output of the missing (None) row")


def _check_determinism(encoder: Encoder, batch: dict) -> None:
    with evaluating(encoder):
        first, second = encoder(batch), encoder(batch)
    check_agree([("pooled output", first.pooled)], [("pooled output", second.pooled)], "two eval-mode forwards")


def _pooled_and_square(encoder: Encoder, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    pooled = encoder(batch).pooled
    return pooled, pooled.float().square().mean()
