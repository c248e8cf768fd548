"""Checks shared by the encoder tests: build through the registry (the user path), gradients
under freezing, the export_assets round trip, file errors and pickling of preprocessors."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError
from mmfuse.model import set_trainable
from mmfuse.plugin_host import get_registry
from mmfuse.testing.media import write_corrupt_file


def build_encoder(name: str, **params: Any) -> Encoder:
    """Build a registered encoder from plain recipe params, as a recipe would."""
    spec = get_registry().get("encoder", name)
    return spec.build(spec.config.model_validate(params))


def encode(encoder: Encoder, values: list[Any]) -> tuple[dict[str, torch.Tensor], EncoderOutput]:
    """Preprocess raw values (None = missing), collate, and run the encoder."""
    preprocessor = encoder.preprocessor()
    batch = preprocessor.collate([None if v is None else preprocessor(v) for v in values])
    return batch, encoder(batch)


def assert_output_contract(output: EncoderOutput, batch_size: int, dim: int) -> None:
    assert output.tokens.ndim == 3 and output.tokens.shape[0] == batch_size and output.tokens.shape[2] == dim
    assert output.mask.dtype == torch.bool and output.mask.shape == output.tokens.shape[:2]
    assert output.pooled.shape == (batch_size, dim)
    assert torch.isfinite(output.pooled).all()


def parameters_with_grad(encoder: Encoder, batch: dict[str, torch.Tensor]) -> set[str]:
    """Names of the parameters that receive a gradient from the pooled output."""
    encoder.zero_grad(set_to_none=True)
    output = encoder(batch)
    loss = output.pooled.pow(2).mean() + output.tokens.pow(2).mean()
    if loss.requires_grad:
        loss.backward()
    return {name for name, p in encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def assert_freezing_controls_gradients(encoder: Encoder, batch: dict[str, torch.Tensor]) -> None:
    """Frozen: no parameter gets a gradient. Unfrozen: nearly all do. trainable_layers=1: only the
    last layer group's parameters do."""
    set_trainable(encoder, freeze=True)
    assert parameters_with_grad(encoder, batch) == set()

    set_trainable(encoder, freeze=False)
    trained = parameters_with_grad(encoder, batch)
    every = {name for name, _ in encoder.named_parameters()}
    assert len(trained) >= 0.8 * len(every), sorted(every - trained)

    set_trainable(encoder, freeze=True, trainable_layers=1)
    last = {id(p) for p in encoder.layer_groups()[-1].parameters()}
    expected = {name for name, p in encoder.named_parameters() if id(p) in last}
    assert expected and parameters_with_grad(encoder, batch) <= expected
    set_trainable(encoder, freeze=False)


def assert_layer_groups_cover_encoder(encoder: Encoder, minimum: int) -> None:
    """Every backbone parameter is in exactly one layer group, and there are at least ``minimum``."""
    groups = encoder.layer_groups()
    assert len(groups) >= minimum
    seen: list[int] = [id(p) for group in groups for p in group.parameters()]
    assert len(seen) == len(set(seen)), "a parameter is in two layer groups"
    own = {id(p) for p in encoder.parameters()}
    assert set(seen) <= own
    assert len(own - set(seen)) == 0, "parameters outside every layer group cannot be unfrozen"


def assert_export_roundtrip(name: str, params: dict[str, Any], encoder: Encoder, values: list[Any], folder) -> dict:
    """export_assets -> rebuild from the overrides (no download) -> load the state dict -> same
    preprocessing settings and same outputs. Returns the overrides."""
    overrides = encoder.export_assets(str(folder))
    assert overrides.get("pretrained") is False
    rebuilt = build_encoder(name, **{**params, **overrides})
    rebuilt.load_state_dict(encoder.state_dict())
    encoder.eval()
    rebuilt.eval()
    assert rebuilt.preprocessor().settings() == encoder.preprocessor().settings()
    with torch.no_grad():
        _, expected = encode(encoder, values)
        _, actual = encode(rebuilt, values)
    torch.testing.assert_close(actual.pooled, expected.pooled)
    torch.testing.assert_close(actual.tokens, expected.tokens)
    return overrides


def assert_missing_and_corrupt_files_are_sample_errors(
    preprocessor: Preprocessor, folder: Path, suffix: str, missing_says: str, corrupt_says: str
) -> None:
    """A path that does not exist and a ``suffix`` file of garbage bytes each raise SampleError
    saying ``missing_says: <path>`` / ``corrupt_says <path>``."""
    missing = folder / f"gone{suffix}"
    with pytest.raises(SampleError, match=f"{missing_says}: {re.escape(str(missing))}"):
        preprocessor(str(missing))
    corrupt = write_corrupt_file(folder / f"broken{suffix}")
    with pytest.raises(SampleError, match=f"{corrupt_says} {re.escape(str(corrupt))}"):
        preprocessor(str(corrupt))


def assert_pickled_copy_preprocesses_alike(preprocessor: Preprocessor, value: Any) -> Preprocessor:
    """A pickled and unpickled preprocessor (as DataLoader workers get it) gives the same tensors
    for ``value``; returns the copy."""
    copy = pickle.loads(pickle.dumps(preprocessor))
    expected, actual = preprocessor(value), copy(value)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    return copy
