"""timm glue shared by the image, audio (mel) and video (frames) encoders: creating a backbone by
name, its layer groups, its token and pooled features, and the config overrides that rebuild it
offline."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
from timm.models import group_modules
from torch import Tensor, nn

__all__ = ["create_timm_backbone", "timm_layer_groups", "timm_features", "timm_rebuild_args", "json_safe"]


def create_timm_backbone(
    name: str,
    *,
    pretrained: bool,
    checkpoint: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    in_chans: int | None = None,
) -> nn.Module:
    """``timm.create_model(name, num_classes=0, ...)``; an unknown name lists close timm names."""
    _check_model_name(name)
    kwargs = dict(model_kwargs or {})
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"timm model '{name}': checkpoint file not found: {checkpoint}")
        kwargs["checkpoint_path"] = checkpoint
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except OSError as exc:  # hub errors (offline, not found) are OSErrors
        if not pretrained:
            raise
        raise OSError(
            f"Cannot fetch the pretrained weights of timm model '{name}' ({exc}). The hub may be "
            f"unreachable or HF_HUB_OFFLINE set; use pretrained: false, a local 'checkpoint' file, "
            f"or 'local-dir:/path' to a folder saved with timm.models.save_for_hf."
        ) from exc


def _check_model_name(name: str) -> None:
    if ":" in name:  # 'hf-hub:' / 'local-dir:' sources are checked by timm itself
        return
    architecture = name.split(".", 1)[0]
    if timm.is_model(architecture):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(architecture, known, n=5, cutoff=0.6)
    close += [m for m in known if architecture.lower() in m and m not in close][: 5 - len(close)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown timm model '{name}'.{hint} List models with `python -c \"import timm; "
        f"print(timm.list_models('*{architecture[:6]}*'))\"`, or use 'local-dir:/path' for a saved folder."
    )


def timm_layer_groups(model: nn.Module) -> list[nn.Module]:
    """Blocks from stem to last stage, from the model's own ``group_matcher`` (one module otherwise)."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [model]
    try:
        grouped = group_modules(model, matcher(coarse=False))
    except (NotImplementedError, AssertionError, TypeError):
        return [model]
    groups = [nn.ModuleList(model.get_submodule(n) for n in names) for _, names in sorted(grouped.items())]
    # parameters owned directly by the model (ViT cls_token, pos_embed) belong with the stem
    direct = list(model.parameters(recurse=False))
    if direct and groups:
        groups[0].append(nn.ParameterList(direct))
    return groups or [model]


def timm_features(backbone: nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """(tokens ``[B, T, D]``, pooled ``[B, D]``) of a timm model: ``forward_features`` flattened
    to tokens; pooled by the model's own head (pre-logits) when it keeps the token width."""
    features = backbone.forward_features(pixels)
    tokens = features.flatten(2).transpose(1, 2) if features.ndim == 4 else features
    if getattr(backbone, "head_hidden_size", backbone.num_features) == backbone.num_features:
        pooled = backbone.forward_head(features, pre_logits=True)
    else:
        pooled = tokens.mean(dim=1)
    return tokens, pooled



def timm_rebuild_args(
    model: nn.Module, extra_kwargs: dict[str, Any], image_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Config overrides that rebuild ``model``'s architecture offline with random weights: the bare
    architecture name and its construction arguments (a 'local-dir:' or 'hf-hub:' source and a
    checkpoint file are no longer needed once the weights travel in the model folder). Resolved
    ``image_settings`` are pinned too: a bare architecture name may have other defaults than the
    config it was loaded from."""
    from timm.models._input import get_model_args

    kwargs = {k: v for k, v in get_model_args(model, {}).items() if k not in ("num_classes", "in_chans")}
    kwargs.update({k: v for k, v in extra_kwargs.items() if k != "in_chans"})
    pinned = ("image_size", "mean", "std", "interpolation", "crop_pct")
    resolved = {key: image_settings[key] for key in pinned if image_settings is not None}
    if image_settings is not None and resolved["image_size"] is None:
        resolved["image_size"] = "native"  # None would mean "the model's default size"
    return {
        "model": model.pretrained_cfg["architecture"],
        "pretrained": False,
        "checkpoint": None,
        "model_kwargs": json_safe(kwargs),
        **resolved,
    }


def json_safe(value: Any) -> Any:
    """Tuples as lists, recursively, so the overrides survive a JSON/YAML round trip unchanged."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
