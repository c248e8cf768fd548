"""Why a fused model decided: per-sample, per-modality attributions (``mmfuse explain``).

For each sample and the predicted class of one task (or the single output of a regression):

* **Modality ablation** — the score with the modality present minus the score with it removed
  through the presence mask (the model sees it as missing, as at prediction time).
* **Integrated gradients per modality** (Captum) — for each modality on its own, the other
  modalities held at their actual values: ``IntegratedGradients`` over the encoder's float inputs
  (pixels, frames, spectrogram or waveform; baseline zeros), or ``LayerIntegratedGradients`` over
  its embedding layer for token ids (baseline: the padding id). A modality's total is the sum of
  its attributions, ≈ score(x) − score(modality at baseline) (Captum reports the gap as the
  convergence delta).
* **Maps** — image attributions summed over channels (a heat map per image, per video frame),
  spectrogram attributions as a time-frequency map, waveform attributions over time, and one
  value per text token (with the tokenizer's token strings when the encoder has one).

``explanation.json`` and PNG maps per sample, and ``summary.json`` with each modality's mean
ablation effect, mean share of |IG| and how often it ranks first, over the manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["SampleExplanation", "explain_batch", "summarise", "write_maps", "write_sample", "ExplainError"]


class ExplainError(ValueError):
    """Attribution that cannot be computed for this model or task."""


@dataclass
class SampleExplanation:
    line: int
    task: str
    target: int
    prediction: Any
    score: float
    ablation: dict[str, float] = field(default_factory=dict)  # encoder -> score drop without it
    integrated_gradients: dict[str, float] = field(default_factory=dict)  # encoder -> sum of attributions
    convergence_delta: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # text encoder -> (token, attribution)
    maps: dict[str, Tensor] = field(default_factory=dict)  # encoder -> attribution map (for PNGs)

    def ranking(self, by: str = "integrated_gradients") -> list[str]:
        values = getattr(self, by)
        return sorted(values, key=lambda name: -abs(values[name]))

    def to_dict(self) -> dict[str, Any]:
        total = sum(abs(v) for v in self.integrated_gradients.values()) or 1.0
        return {
            "line": self.line,
            "task": self.task,
            "target_index": self.target,
            "prediction": self.prediction,
            "score": self.score,
            "modalities": {
                name: {
                    "ablation": self.ablation.get(name),
                    "integrated_gradients": self.integrated_gradients.get(name),
                    "ig_share": abs(self.integrated_gradients.get(name, 0.0)) / total,
                    "convergence_delta": self.convergence_delta.get(name),
                }
                for name in sorted(set(self.ablation) | set(self.integrated_gradients))
            },
            "ranking": self.ranking(),
            "tokens": {name: [[t, a] for t, a in pairs] for name, pairs in self.tokens.items()},
        }


def _expand(value: Any, factor: int) -> Any:
    if isinstance(value, Tensor):
        return value.repeat_interleave(factor, dim=0) if factor > 1 else value
    if isinstance(value, dict):
        return {k: _expand(v, factor) for k, v in value.items()}
    return value


def _score_function(model: nn.Module, batch: dict[str, Any], task: str, encoder: str, keys: list[str]) -> Callable[..., Tensor]:
    """``f(*tensors of encoder) -> task output [N, C]``, every other input expanded to N rows."""
    size = len(batch["index"])

    def forward(*tensors: Tensor) -> Tensor:
        factor = tensors[0].shape[0] // size
        inputs = _expand(batch["inputs"], factor)
        inputs[encoder] = {**inputs[encoder], **dict(zip(keys, tensors))}
        expanded = {"inputs": inputs, "present": _expand(batch["present"], factor)}
        output = model(expanded)[task]
        return output if output.ndim == 2 else output.reshape(output.shape[0], -1)

    return forward


def _embedding_layer(encoder: nn.Module, ids: Tensor) -> nn.Embedding | None:
    largest = int(ids.max()) if ids.numel() else 0
    for module in encoder.modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings > largest:
            return module
    return None


def _token_strings(preprocessor: Any, ids: list[int]) -> list[str]:
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    return [str(i) for i in ids]


def _map_of(attribution: Tensor) -> Tensor:
    """An attribution tensor of one sample as a map to draw: channels summed for images/frames."""
    single = attribution[0].detach().float()
    if single.ndim == 3 and single.shape[0] in (1, 3):  # C, H, W (an image, a 1-channel spectrogram)
        return single.sum(0)
    if single.ndim == 4 and single.shape[1] in (1, 3):  # T, C, H, W (video frames)
        return single.sum(1)
    return single


def explain_batch(
    model: nn.Module, batch: dict[str, Any], task: str, preprocessors: dict[str, Any], steps: int = 32, line: int = 0
) -> SampleExplanation:
    """Explain the one sample in ``batch`` (batch size 1) for ``task``; ``line``: its manifest line."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    if len(batch["index"]) != 1:
        raise ExplainError("explain_batch takes a batch of one sample")
    model.eval()
    with torch.no_grad():
        output = model(batch)[task]
    if not isinstance(output, Tensor):
        raise ExplainError(f"task '{task}' does not output one tensor of scores; attribution needs a classification or regression task")
    scores = output.reshape(1, -1).float()
    target = int(scores.argmax(-1)) if scores.shape[1] > 1 else 0
    probabilities = scores.softmax(-1) if scores.shape[1] > 1 else scores
    explanation = SampleExplanation(
        line=line,
        task=task,
        target=target,
        prediction=model.tasks[task].predict(output)[0],
        score=float(probabilities[0, target]),
    )
    present = [name for name, mask in batch["present"].items() if bool(mask[0])]
    for encoder in present:
        removed = {**batch, "present": {**batch["present"], encoder: torch.zeros_like(batch["present"][encoder])}}
        with torch.no_grad():
            other = model(removed)[task].reshape(1, -1).float()
        other = other.softmax(-1) if other.shape[1] > 1 else other
        explanation.ablation[encoder] = explanation.score - float(other[0, target])
    for encoder in present:
        tensors = batch["inputs"][encoder]
        floats = sorted(k for k, v in tensors.items() if isinstance(v, Tensor) and v.is_floating_point())
        integers = sorted(k for k, v in tensors.items() if isinstance(v, Tensor) and not v.is_floating_point() and v.dtype != torch.bool and "mask" not in k)
        target_arg = target if scores.shape[1] > 1 else 0
        if floats:
            inputs = tuple(tensors[k].detach().float() for k in floats)
            forward = _score_function(model, batch, task, encoder, floats)
            wrapped = (lambda *t, f=forward: _probabilities(f(*t))) if scores.shape[1] > 1 else forward
            attributions, delta = IntegratedGradients(wrapped).attribute(
                inputs, baselines=tuple(torch.zeros_like(t) for t in inputs), target=target_arg, n_steps=steps,
                return_convergence_delta=True,
            )
            explanation.integrated_gradients[encoder] = float(sum(a.sum() for a in attributions))
            explanation.convergence_delta[encoder] = float(delta.abs().max())
            explanation.maps[encoder] = _map_of(attributions[0])
        elif integers:
            key = integers[0]
            ids = tensors[key]
            layer = _embedding_layer(model.encoders[encoder], ids)
            if layer is None:
                continue
            forward = _score_function(model, batch, task, encoder, [key])
            wrapped = (lambda t, f=forward: _probabilities(f(t))) if scores.shape[1] > 1 else forward
            pad = getattr(getattr(preprocessors.get(encoder), "tokenizer", None), "pad_token_id", None) or 0
            attributions, delta = LayerIntegratedGradients(wrapped, layer).attribute(
                ids, baselines=torch.full_like(ids, pad), target=target_arg, n_steps=steps, return_convergence_delta=True
            )
            per_token = attributions[0].sum(-1).detach()
            mask = next((v for k, v in tensors.items() if "mask" in k), None)
            keep = mask[0].bool() if mask is not None else torch.ones_like(ids[0], dtype=torch.bool)
            explanation.integrated_gradients[encoder] = float(per_token[keep].sum())
            explanation.convergence_delta[encoder] = float(delta.abs().max())
            strings = _token_strings(preprocessors.get(encoder), ids[0][keep].tolist())
            explanation.tokens[encoder] = list(zip(strings, per_token[keep].tolist()))
    return explanation


def _probabilities(scores: Tensor) -> Tensor:
    return scores.float().softmax(-1)


def write_maps(explanation: SampleExplanation, folder: Path) -> list[Path]:
    """PNG maps of one sample (needs matplotlib; returns the files written)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for encoder, values in explanation.maps.items():
        data = values.cpu().numpy()
        if data.ndim == 3:  # frames
            count = data.shape[0]
            figure, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.4), squeeze=False)
            limit = abs(data).max() or 1.0
            for index in range(count):
                axes[0][index].imshow(data[index], cmap="coolwarm", vmin=-limit, vmax=limit)
                axes[0][index].set_title(f"frame {index}", fontsize=8)
                axes[0][index].axis("off")
        elif data.ndim == 2:
            figure, axis = plt.subplots(figsize=(4, 3.2))
            limit = abs(data).max() or 1.0
            image = axis.imshow(data, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto", origin="lower" if data.shape[0] < data.shape[1] else "upper")
            figure.colorbar(image, ax=axis)
        else:
            figure, axis = plt.subplots(figsize=(5, 2.4))
            axis.plot(data.reshape(-1))
            axis.set_xlabel("input position")
        figure.suptitle(f"{encoder}: integrated gradients (target {explanation.target})", fontsize=9)
        path = folder / f"{encoder}.png"
        figure.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    for encoder, pairs in explanation.tokens.items():
        figure, axis = plt.subplots(figsize=(max(3, 0.35 * len(pairs) + 1), 2.6))
        values = [a for _, a in pairs]
        axis.bar(range(len(pairs)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
        axis.set_xticks(range(len(pairs)), [t for t, _ in pairs], rotation=60, ha="right", fontsize=8)
        axis.set_title(f"{encoder}: token attributions (target {explanation.target})", fontsize=9)
        path = folder / f"{encoder}.png"
        figure.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def summarise(explanations: list[SampleExplanation]) -> dict[str, dict[str, float]]:
    """Each modality over all samples: mean ablation effect, mean |IG| share, times ranked first."""
    names = sorted({n for e in explanations for n in (*e.ablation, *e.integrated_gradients)})
    table: dict[str, dict[str, float]] = {}
    for name in names:
        ablations = [e.ablation[name] for e in explanations if name in e.ablation]
        shares = []
        for e in explanations:
            total = sum(abs(v) for v in e.integrated_gradients.values())
            if name in e.integrated_gradients and total > 0:
                shares.append(abs(e.integrated_gradients[name]) / total)
        table[name] = {
            "samples": float(len(ablations)),
            "mean_ablation": sum(ablations) / len(ablations) if ablations else math.nan,
            "mean_ig_share": sum(shares) / len(shares) if shares else math.nan,
            "ranked_first": float(sum(1 for e in explanations if e.integrated_gradients and e.ranking()[0] == name)),
        }
    return table


def write_sample(explanation: SampleExplanation, out: Path) -> Path:
    folder = out / f"sample-{explanation.line}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "explanation.json").write_text(json.dumps(explanation.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    write_maps(explanation, folder)
    return folder
