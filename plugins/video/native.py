"""Torch side of ``mmfuse/video_native``: torchvision VideoResNet models or transformers video models."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.backbones.hf import (
    from_pretrained_or_explain,
    hf_layer_groups,
    load_hf_model,
    set_hf_grad_checkpointing,
)
from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse_plugins.video import VideoNativeConfig
from mmfuse_plugins.video.decode import VideoPreprocessor

__all__ = ["NativeVideoEncoder", "build_native_encoder", "TORCHVISION_VIDEO_MODELS"]

#: torchvision video models whose stages give spatio-temporal tokens
TORCHVISION_VIDEO_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18")
# torchvision's Kinetics-400 video weights: 112x112 crops, 16 frames, these statistics
_KINETICS = {"image_size": [112, 112], "mean": [0.43216, 0.394666, 0.37645], "std": [0.22803, 0.22145, 0.216989]}
_KINETICS_FRAMES = 16


class _VideoResNetBody(nn.Module):
    """A torchvision VideoResNet without its pooling and classifier: ``[B, 3, T, H, W]`` ->
    ``[B, C, T', H', W']``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem, self.layer1, self.layer2 = model.stem, model.layer1, model.layer2
        self.layer3, self.layer4 = model.layer3, model.layer4
        self.num_features = int(model.fc.in_features)

    def forward(self, clips: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(clips)))))

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


class NativeVideoEncoder(Encoder):
    """Tokens are the backbone's spatio-temporal tokens; pooled is their mean. Clips always hold
    ``num_frames`` frames (short ones repeat their last frame), so every token is real."""

    modality = "video"

    def __init__(self, config: VideoNativeConfig, backbone: nn.Module, settings: dict[str, Any],
                 num_frames: int, processor: Any | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.processor = processor
        self.is_torchvision = isinstance(backbone, _VideoResNetBody)
        self.output_dim = int(backbone.num_features if self.is_torchvision else backbone.config.hidden_size)
        self._image_settings = settings
        self.num_frames = num_frames

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        frames = inputs["frames"]  # [B, N, 3, H, W]
        if self.is_torchvision:
            tokens = self.backbone(frames.transpose(1, 2)).flatten(2).transpose(1, 2)
        else:
            tokens = self.backbone(pixel_values=frames).last_hidden_state
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=tokens.mean(dim=1))

    def preprocessor(self) -> VideoPreprocessor:
        c = self.config
        return VideoPreprocessor(
            self._image_settings, self.num_frames, c.sampling, c.fps, pad_with_last=True, augment=c.augment,
            decoder=c.decoder,
        )

    def layer_groups(self) -> list[nn.Module]:
        return self.backbone.stages() if self.is_torchvision else hf_layer_groups(self.backbone)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.is_torchvision:
            raise NotImplementedError("torchvision video models have no gradient checkpointing support")
        set_hf_grad_checkpointing(self.backbone, enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        pinned = {key: self._image_settings[key] for key in ("image_size", "mean", "std", "interpolation", "crop_pct")}
        overrides = {"pretrained": False, "checkpoint": None, "num_frames": self.num_frames, **pinned}
        if not self.is_torchvision:
            target = Path(folder).resolve()
            self.backbone.config.save_pretrained(target)
            if self.processor is not None:
                self.processor.save_pretrained(target)
            overrides["model"] = str(target)
        return overrides


def build_native_encoder(config: VideoNativeConfig) -> NativeVideoEncoder:
    if config.model in TORCHVISION_VIDEO_MODELS:
        backbone = _torchvision_body(config)
        settings = _image_settings(config, _KINETICS)
        return NativeVideoEncoder(config, backbone, settings, config.num_frames or _KINETICS_FRAMES)
    _reject_unknown_torchvision_name(config.model)
    backbone = load_hf_model(config.model, pretrained=config.pretrained)
    processor = _image_processor(config.model)
    size = getattr(backbone.config, "image_size", 224)
    defaults = {
        "image_size": [size, size] if isinstance(size, int) else list(size),
        "mean": list(getattr(processor, "image_mean", None) or [0.485, 0.456, 0.406]),
        "std": list(getattr(processor, "image_std", None) or [0.229, 0.224, 0.225]),
    }
    model_frames = getattr(backbone.config, "num_frames", None)
    if config.num_frames is not None and model_frames is not None and config.num_frames != model_frames:
        raise ValueError(
            f"video model '{config.model}' takes exactly {model_frames} frames; set num_frames: {model_frames} "
            f"(or leave it out), got {config.num_frames}"
        )
    frames = config.num_frames or model_frames or _KINETICS_FRAMES
    return NativeVideoEncoder(config, backbone, _image_settings(config, defaults), frames, processor)


def _image_settings(config: VideoNativeConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    size = config.image_size
    return {
        "image_size": ([size, size] if isinstance(size, int) else list(size)) if size else defaults["image_size"],
        "mean": list(config.mean or defaults["mean"]),
        "std": list(config.std or defaults["std"]),
        "interpolation": config.interpolation or "bilinear",
        "crop_pct": config.crop_pct or 1.0,
        "crop_mode": "center",
    }


def _torchvision_body(config: VideoNativeConfig) -> _VideoResNetBody:
    import torchvision

    try:
        model = torchvision.models.get_model(config.model, weights="DEFAULT" if config.pretrained else None)
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        raise OSError(
            f"Cannot fetch the pretrained weights of torchvision model '{config.model}' ({exc}); without "
            f"network use pretrained: false and a local 'checkpoint' state-dict file."
        ) from exc
    if config.checkpoint is not None:
        state = _read_state_dict(Path(config.checkpoint))
        missing, unexpected = model.load_state_dict(state, strict=False)
        wrong = [k for k in missing + unexpected if not k.startswith("fc.")]
        if wrong:
            raise ValueError(f"checkpoint {config.checkpoint} does not fit {config.model}: keys {wrong[:5]}")
    return _VideoResNetBody(model)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _reject_unknown_torchvision_name(name: str) -> None:
    """A bare name that is neither a folder nor a hub id ('org/name') but looks like a torchvision
    model is a typo: say so instead of asking the hub."""
    if "/" in name or Path(name).exists():
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models.video)
    close = difflib.get_close_matches(name, list(TORCHVISION_VIDEO_MODELS) + known, n=3, cutoff=0.6)
    if name in known:
        raise ValueError(
            f"torchvision video model '{name}' is not supported by video_native (no token output); "
            f"use one of {', '.join(TORCHVISION_VIDEO_MODELS)} or a transformers video model."
        )
    if close:
        raise ValueError(f"Unknown video model '{name}'. Did you mean: {', '.join(dict.fromkeys(close))}?")


def _image_processor(name: str) -> Any | None:
    from transformers import AutoImageProcessor

    try:
        return from_pretrained_or_explain(AutoImageProcessor.from_pretrained, name, "video image processor")
    except (OSError, ValueError):
        return None  # a bare model folder: ImageNet statistics and the config's image size apply
