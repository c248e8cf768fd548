"""The contracts at each hand-over: Preprocessor -> Encoder -> FusionHead -> Task.

Batch layout produced by the data pipeline and consumed by :class:`mmfuse.model.FusedModel`::

    {
      "inputs":  {encoder_name: {tensor_name: Tensor[B, ...]}},   # from Preprocessor.collate
      "present": {encoder_name: BoolTensor[B]},                   # False where the sample lacks it
      "targets": {task_name: Tensor[B, ...]},                     # from Task.collate_targets
                                       # (a dict for a task with extra inputs, see Task.extra_inputs)
      "skipped": int,            # optional: samples dropped from this batch (data.on_bad_sample: skip)
    }

A missing modality is never silently fed as zeros: its rows are masked in ``present`` and every
fusion head excludes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from pydantic import BaseModel
from torch import Tensor, nn

__all__ = [
    "EncoderOutput",
    "ExtraInput",
    "SampleError",
    "Preprocessor",
    "Encoder",
    "FusionHead",
    "Task",
    "masked_mean",
]


@dataclass
class EncoderOutput:
    """What every encoder returns.

    tokens: ``[B, T, D]`` token / patch / frame features.
    mask: ``[B, T]`` bool, True for real (non-padding) tokens.
    pooled: ``[B, D]`` one vector per sample.
    extras: optional per-sample side information that token-level tasks read (character
    offsets, word ids of each token...), keyed by name, each ``[B, ...]``; fusion heads ignore
    it. Default: empty.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtraInput:
    """An input a task reads besides the model's encoders: the manifest column it comes from and
    the preprocessor that turns a raw value of it into tensors (see :meth:`Task.extra_inputs`)."""

    column: str
    preprocessor: "Preprocessor"


class SampleError(ValueError):
    """A raw value that a preprocessor cannot turn into tensors (missing, unreadable, corrupt)."""


class Preprocessor:
    """Turns one raw value into tensors (CPU, in DataLoader workers) and pads a list of them.

    Subclasses must be picklable (they travel to worker processes) and must not touch CUDA.
    """

    #: the modality this preprocessor reads ("text", "image", "audio", "video", ...)
    modality: str = "unknown"
    #: True when raw values are file paths: the data pipeline resolves relative paths against the
    #: data root before calling the preprocessor (in-memory values such as PIL images or
    #: (array, sample_rate) tuples pass through unchanged)
    reads_files: bool = False
    #: False when ``__call__`` is not a pure function of the value and ``settings()`` (it draws
    #: random numbers): the preprocessed-sample cache (``data.cache``) then never stores its output
    cacheable: bool = True

    def __call__(self, value: Any) -> dict[str, Tensor]:
        """One raw value (text, path, array...) -> named tensors. Raise SampleError on bad input."""
        raise NotImplementedError

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack and pad a batch; ``None`` marks a sample without this modality and must still
        produce a row (any content: the presence mask excludes it)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Plain-data preprocessing settings saved with a model folder (size, mean/std, rate...)."""
        return {}

    def fit(self, values: Sequence[Any]) -> dict[str, Any]:
        """Learn from the training split once, before training (optional; default: nothing).

        Called by :func:`mmfuse.run.prepare` in the main process, after the datasets are built and
        before any loader starts, with the raw values of this encoder's column in the training
        split (rows without the modality and rows skipped as bad left out; file paths resolved).
        Use it for what must come from the data: a vocabulary, ``mean: auto`` statistics. The
        preprocessor updates itself and the state it shares with its encoder, so that
        ``settings()`` and ``Encoder.export_assets`` report the learned values and the model
        folder predicts with them. Must be deterministic (a resumed run fits again).

        Returns the learned values as encoder config overrides (``{"mean": [...]}``); they are
        written into the run's resolved recipe. Return ``{}`` for what lives in asset files."""
        return {}

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Random training-time transform of one preprocessed sample (optional; default: none).

        Applied by the training dataset only (never in evaluation or prediction), AFTER the
        deterministic ``__call__`` — a cache of preprocessed samples stores ``__call__``'s output
        and augments after reading it. ``tensors`` is ``__call__``'s output (do not modify it in
        place: it may be a cached copy); return tensors of the same names, dtypes and (unless
        ``collate`` pads them) shapes. Draw every random number from ``generator``: the dataset
        seeds it from (recipe seed, epoch, sample index, encoder name), so augmentation is
        reproducible and bit-identical after a resume, whatever worker runs it. Libraries that
        use the global RNG (torchvision transforms) run under
        :func:`mmfuse.data.augmentation.seeded_global_rng`."""
        return tensors


class Encoder(nn.Module):
    """Uniform interface of every encoder, so the engine never special-cases a plugin.

    Subclasses set ``modality`` and ``output_dim`` and implement ``forward`` and ``preprocessor``.
    """

    modality: str = "unknown"
    output_dim: int

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocessor(self) -> Preprocessor:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:
        """Trainable blocks from input to output; ``trainable_layers=N`` unfreezes the last N."""
        return [self]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory where the backbone supports it."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def export_assets(self, folder: str) -> dict[str, Any]:
        """Make this encoder rebuildable offline, for a portable model folder.

        Write what rebuilding the architecture needs (model config, tokenizer files) into
        ``folder`` (an empty directory reserved for this encoder) and return the config overrides
        that make the builder use it, e.g. ``{"model": "<folder>/hf", "pretrained": False}``.
        Path values are returned as absolute paths inside ``folder``; the model folder stores
        them relative to itself. Weights come from the model folder's safetensors, so nothing is
        downloaded. Default: nothing needed (the config alone rebuilds the module)."""
        return {}


class FusionHead(nn.Module):
    """Built from ``{encoder_name: output_dim}``; fuses the encoders' outputs into ``[B, D]``."""

    output_dim: int

    def forward(  # pragma: no cover - abstract
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> Tensor:
        raise NotImplementedError


class Task(nn.Module):
    """A head on the fused vector, its loss, its metrics, and the target encoding."""

    #: False for tasks without a target column (contrastive alignment)
    needs_target: bool = True
    #: True when ``loss`` runs torch.distributed collectives (a gather across processes): the
    #: engine then has every rank call ``loss`` (or ``empty_loss``) equally often, in training and
    #: in evaluation, so no rank waits in a collective the others never enter
    uses_collectives: bool = False
    #: False when the task ignores the fused vector (it reads the encoders' features directly):
    #: when no task reads it, the engine does not train the fusion head
    reads_fused: bool = True

    def forward(  # pragma: no cover - abstract
        self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> Any:
        raise NotImplementedError

    def encode_target(self, value: Any) -> Tensor:
        """One raw target (label string, number, list) -> tensor. Raise SampleError if invalid."""
        raise NotImplementedError

    def collate_targets(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def loss(self, outputs: Any, targets: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def empty_loss(self, device: torch.device) -> Tensor:
        """The loss contribution of a rank that has no rows in this batch (all skipped, or
        evaluation ran out of rows before the other ranks). A task with ``uses_collectives`` must
        enter the same collectives as ``loss`` here (e.g. gather zero rows). Default: zero."""
        return torch.zeros((), device=device)

    def build_metrics(self) -> Any:
        """A ``torchmetrics.MetricCollection`` (synchronised across processes by torchmetrics)."""
        raise NotImplementedError

    def update_metrics(self, metrics: Any, outputs: Any, targets: Tensor | None) -> None:
        metrics.update(outputs, targets)

    def predict(self, outputs: Any) -> list[Any]:
        """Outputs -> one plain Python prediction per sample (labels decoded)."""
        raise NotImplementedError

    def probabilities(self, outputs: Any) -> Tensor | None:
        """Class probabilities where the task has them, else None."""
        return None

    def label_names(self) -> list[Any] | None:
        """The label vocabulary in output-index order (entry ``i`` names column ``i`` of
        ``probabilities`` and is what ``predict`` returns for it), or None for a task without one
        (regression, contrastive). Entries are strings or ints, as in the recipe.

        The one source of label names for the model folder's ``labels.json``, the export's label
        list and the keys of ``Predictor.predict_proba``; the conformance kit checks it."""
        return None

    def bind_encoders(self, encoders: dict[str, "Encoder"]) -> None:
        """Called once by ``build_fused_model`` after every component is built, with the model's
        encoders. A task whose head comes from an encoder's own library (a masked-LM head that
        shares the encoder's word embeddings, a tokenizer) builds it here. Do not register the
        encoders as sub-modules. Default: nothing."""

    def prepare_batch(self, name: str, batch: dict[str, Any]) -> None:
        """Change a collated training or evaluation batch in place before the model sees it
        (CPU, in DataLoader workers; never at prediction): a self-supervised task masks an
        encoder's inputs here and puts its own targets in ``batch["targets"][name]``. Every task
        sees the changed inputs. ``batch["index"]`` (dataset positions) and ``batch["epoch"]``
        let it seed its randomness per sample, so that masks do not depend on the process, the
        worker or a resume. Default: nothing."""

    def training_callbacks(self, name: str) -> list[Any]:
        """Engine callbacks (:class:`mmfuse.engine.callbacks.Callback`) this task needs while a
        Trainer fits the model, ``name`` being the task's name in the model: e.g. one that
        recomputes state from the training data before each evaluation (the prototype task's class
        means). The Trainer runs them after the recipe's and the caller's callbacks, on every rank.
        Default: none."""
        return []

    def extra_inputs(self) -> dict[str, ExtraInput]:
        """Inputs this task needs from the raw rows besides the model's encoders, by name (a
        distillation task's teacher reads columns the student has no encoder for). Default: none.

        The data pipeline preprocesses them from the same rows, in the DataLoader workers, through
        the preprocessed-sample cache when it is on, never augmented; a missing value is absent
        (``present`` False), as for an encoder. The task then receives as targets (in ``loss``
        and ``update_metrics``) the dict ``{"target": collate_targets(...) or None (without
        needs_target), "inputs": {name: tensors}, "present": {name: BoolTensor[B]}}``. Return
        the same preprocessor objects on every call. Prediction never builds extra inputs: a
        model must predict without them."""
        return {}

    def export_assets(self, folder: str) -> dict[str, Any]:
        """Like :meth:`Encoder.export_assets`, for a task that wraps a pretrained model (a causal
        LM and its tokenizer): write what rebuilding it offline needs into ``folder`` and return
        the config overrides that use it. Default: nothing needed."""
        return {}


def masked_mean(values: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only positions where ``mask`` is True."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim)
    count = weights.sum(dim).clamp_min(1.0)
    return total / count


def config_dict(config: BaseModel | None) -> dict[str, Any]:
    return config.model_dump(mode="json") if config is not None else {}
