"""Video encoders, decoded with PyAV: ``mmfuse/video_frames`` (any timm image backbone per frame,
then temporal mean pooling or a small temporal transformer) and ``mmfuse/video_native`` (a video
backbone: torchvision ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18``, or a transformers video model such
as VideoMAE by hub name or local folder)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.backbones.image_settings import ImagePreprocessingOverrides
from mmfuse.hookspecs import hookimpl
from mmfuse.augment import VideoAugmentConfig

__all__ = ["FrameSampling", "VideoFramesConfig", "VideoNativeConfig"]


class FrameSampling(BaseModel):
    """Which frames are decoded: ``uniform`` takes the centres of ``num_frames`` equal segments of
    the whole clip; ``fps`` takes frames every 1/fps seconds from the start (up to ``num_frames``;
    shorter clips are padded and masked)."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(8, gt=0, description="frames per clip")
    sampling: Literal["uniform", "fps"] = "uniform"
    fps: float | None = Field(None, gt=0, description="frames per second for sampling: fps")
    decoder: Literal["pyav", "torchcodec"] = Field(
        "pyav",
        description="pyav (bundles its own FFmpeg) or torchcodec (needs FFmpeg's shared libraries on the system); "
        "both pick the same frames",
    )

    @model_validator(mode="after")
    def _fps_given(self) -> "FrameSampling":
        if self.sampling == "fps" and self.fps is None:
            raise ValueError("sampling: fps needs 'fps' (frames per second), e.g. fps: 2")
        return self


class VideoFramesConfig(FrameSampling, ImagePreprocessingOverrides):
    model: str = Field(..., description="timm image model applied to every frame (or 'local-dir:/path')")
    pretrained: bool = Field(True, description="load the image model's pretrained weights")
    checkpoint: str | None = Field(None, description="local timm checkpoint file to load")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")
    temporal: Literal["mean", "transformer"] = Field("mean", description="how frame features are combined")
    temporal_layers: int = Field(1, ge=1, description="layers of the temporal transformer")
    temporal_heads: int = Field(4, ge=1, description="attention heads of the temporal transformer")
    augment: VideoAugmentConfig | None = Field(
        None, description="training-time augmentation: temporal jitter + image steps per clip (training split only)"
    )


class VideoNativeConfig(FrameSampling, ImagePreprocessingOverrides):
    model: str = Field(
        ..., description="torchvision video model ('r3d_18', 'r2plus1d_18', 'mc3_18') or a transformers "
        "video model hub name / local folder ('MCG-NJU/videomae-base')"
    )
    num_frames: int | None = Field(
        None, gt=0, description="frames per clip; default: the model config's num_frames (transformers), else 16"
    )
    pretrained: bool = Field(True, description="load pretrained weights (torchvision: Kinetics-400)")
    checkpoint: str | None = Field(None, description="torchvision models: a local state-dict file to load")
    augment: VideoAugmentConfig | None = Field(
        None, description="training-time augmentation: temporal jitter + image steps per clip (training split only)"
    )


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/video_frames",
        builder="mmfuse_plugins.video.frames:build_frames_encoder",
        config=VideoFramesConfig,
        description="video file -> N sampled frames -> timm backbone per frame -> temporal pooling",
        aliases=("video",),
    )
    register(
        "mmfuse/video_native",
        builder="mmfuse_plugins.video.native:build_native_encoder",
        config=VideoNativeConfig,
        description="video file -> N sampled frames -> torchvision / transformers video backbone",
    )
