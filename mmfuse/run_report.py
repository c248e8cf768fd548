"""``report.html``: one self-contained page per run (no server, no external files).

Sections: a summary; training and validation loss, every validation metric and the learning rate
over the run (from ``metrics.csv`` and ``evals.csv``); for each classification (or prototype)
task, the confusion matrix, per-class precision / recall / F1 and a calibration (reliability) plot
with its expected calibration error; and a modality-ablation table: each task's metrics on the
validation split with each modality removed through the presence mask. Plots are matplotlib PNGs
embedded as base64; without matplotlib (``pip install 'mmfuse[report]'``) the page has every table
and says the plots need it.

Written at the end of ``mmfuse train`` from the saved model folder, and rebuilt by
``mmfuse report RUN`` (optionally on another manifest with ``--data``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["REPORT_FILE", "build_report", "ValidationAnalysis", "analyse"]

REPORT_FILE = "report.html"
CALIBRATION_BINS = 10
#: tasks whose outputs are [B, classes] logits: confusion matrix, per-class table, calibration
_SINGLE_LABEL_TASKS = ("mmfuse/classification", "mmfuse/prototype")


# --------------------------------------------------------------------------- analysis


@dataclass
class ClassificationAnalysis:
    labels: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    confidence: list[float]  # max probability per row
    correct: list[bool]

    def per_class(self) -> list[dict[str, float]]:
        rows = []
        for index, label in enumerate(self.labels):
            true_positive = self.confusion[index][index]
            predicted = sum(row[index] for row in self.confusion)
            actual = sum(self.confusion[index])
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / actual if actual else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"label": label, "support": actual, "precision": precision, "recall": recall, "f1": f1})
        return rows

    def calibration(self) -> tuple[list[dict[str, float]], float]:
        """Reliability bins (mean confidence, accuracy, count) and the expected calibration error."""
        bins: list[dict[str, float]] = []
        total = len(self.confidence)
        ece = 0.0
        for b in range(CALIBRATION_BINS):
            low, high = b / CALIBRATION_BINS, (b + 1) / CALIBRATION_BINS
            members = [i for i, c in enumerate(self.confidence) if low < c <= high or (b == 0 and c == 0)]
            if not members:
                continue
            confidence = sum(self.confidence[i] for i in members) / len(members)
            accuracy = sum(self.correct[i] for i in members) / len(members)
            bins.append({"low": low, "high": high, "confidence": confidence, "accuracy": accuracy, "count": len(members)})
            ece += len(members) / total * abs(accuracy - confidence)
        return bins, ece


@dataclass
class ValidationAnalysis:
    rows: int
    metrics: dict[str, float]
    classification: dict[str, ClassificationAnalysis] = field(default_factory=dict)
    ablation: dict[str, dict[str, float]] = field(default_factory=dict)  # removed encoder -> metrics


def _without(batch: dict[str, Any], encoder: str) -> dict[str, Any]:
    present = dict(batch.get("present", {}))
    size = len(batch["index"])
    present[encoder] = torch.zeros(size, dtype=torch.bool, device=next(iter(present.values())).device if present else "cpu")
    return {**batch, "present": present}


def analyse(model: Any, recipe: Any, batches: list[dict[str, Any]], device: Any) -> ValidationAnalysis:
    """Metrics, classification details and the modality ablation of ``model`` over ``batches``."""
    from mmfuse.cli.eval import evaluate_batches

    metrics = evaluate_batches(model, batches, device)
    rows = int(metrics.pop("rows", 0))
    classification_tasks = [
        name for name, slot in recipe.tasks.items() if slot.type in _SINGLE_LABEL_TASKS and model.tasks[name].label_names()
    ]
    collected: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {name: ([], []) for name in classification_tasks}
    with torch.inference_mode():
        for batch in batches:
            outputs = model(batch)
            for name in classification_tasks:
                targets = batch["targets"].get(name)
                if targets is None:
                    continue
                keep = targets >= 0
                collected[name][0].append(outputs[name].float().softmax(-1)[keep].cpu())
                collected[name][1].append(targets[keep].cpu())
    analysis = ValidationAnalysis(rows=rows, metrics=metrics)
    for name, (probabilities, targets) in collected.items():
        if not probabilities:
            continue
        probs, truth = torch.cat(probabilities), torch.cat(targets)
        labels = [str(label) for label in model.tasks[name].label_names()]
        confusion = torch.zeros(len(labels), len(labels), dtype=torch.long)
        predicted = probs.argmax(-1)
        for t, p in zip(truth.tolist(), predicted.tolist()):
            confusion[t, p] += 1
        analysis.classification[name] = ClassificationAnalysis(
            labels=labels,
            confusion=confusion.tolist(),
            confidence=probs.max(-1).values.tolist(),
            correct=(predicted == truth).tolist(),
        )
    if len(model.encoders) > 1:
        for encoder in model.encoders:
            ablated = evaluate_batches(model, [_without(b, encoder) for b in batches], device)
            ablated.pop("rows", None)
            analysis.ablation[encoder] = ablated
    return analysis


# --------------------------------------------------------------------------- history


def _read_csv(file: Path) -> list[dict[str, float]]:
    if not file.is_file():
        return []
    rows = []
    with open(file, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- plots


def _matplotlib() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(plt: Any, figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _curves(plt: Any, epochs: list[dict[str, float]], evals: list[dict[str, float]]) -> list[str]:
    images = []
    figure, axis = plt.subplots(figsize=(6, 3.2))
    if any("train/loss" in r for r in epochs):
        axis.plot([r["step"] for r in epochs if "train/loss" in r], [r["train/loss"] for r in epochs if "train/loss" in r], "o-", label="train/loss (epoch mean)")
    if any("val/loss" in r for r in evals):
        axis.plot([r["step"] for r in evals if "val/loss" in r], [r["val/loss"] for r in evals if "val/loss" in r], "s-", label="val/loss")
    axis.set_xlabel("optimizer step")
    axis.set_title("loss")
    axis.legend()
    images.append(_png(plt, figure))
    metric_keys = sorted({k for r in evals for k in r if k.startswith("val/") and not k.endswith("loss") and k != "val/skipped"})
    if metric_keys:
        figure, axis = plt.subplots(figsize=(6, 3.2))
        for key in metric_keys:
            points = [(r["step"], r[key]) for r in evals if key in r and not math.isnan(r[key])]
            if points:
                axis.plot(*zip(*points), ".-", label=key)
        axis.set_xlabel("optimizer step")
        axis.set_title("validation metrics")
        axis.legend(fontsize=7)
        images.append(_png(plt, figure))
    if any("lr" in r for r in epochs):
        figure, axis = plt.subplots(figsize=(6, 2.4))
        axis.plot([r["step"] for r in epochs if "lr" in r], [r["lr"] for r in epochs if "lr" in r], "o-")
        axis.set_xlabel("optimizer step")
        axis.set_title("learning rate (end of each epoch)")
        images.append(_png(plt, figure))
    return images


def _confusion_plot(plt: Any, name: str, result: ClassificationAnalysis) -> str:
    size = max(3.0, 0.45 * len(result.labels) + 1.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(result.confusion, cmap="Blues")
    axis.set_xticks(range(len(result.labels)), result.labels, rotation=45, ha="right")
    axis.set_yticks(range(len(result.labels)), result.labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i, row in enumerate(result.confusion):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=8)
    axis.set_title(f"{name}: confusion matrix")
    return _png(plt, figure)


def _calibration_plot(plt: Any, name: str, bins: list[dict[str, float]], ece: float) -> str:
    figure, axis = plt.subplots(figsize=(3.6, 3.6))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="model")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{name}: calibration (ECE {ece:.3f})")
    axis.legend(fontsize=7)
    return _png(plt, figure)


# --------------------------------------------------------------------------- html


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{margin:.3em;vertical-align:top}
.note{color:#666;font-size:.9em}"""


def render(run_name: str, summary: dict[str, Any], epochs: list[dict[str, float]], evals: list[dict[str, float]],
           analysis: ValidationAnalysis | None, plt: Any | None, data_name: str) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(run_name)} — mmfuse report</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(run_name)}</h1>"]
    parts.append("<h2>Summary</h2>" + _table(["", "value"], [[k, v] for k, v in summary.items()]))
    parts.append("<h2>Training curves</h2>")
    if plt is None:
        parts.append("<p class='note'>Plots need matplotlib: pip install 'mmfuse[report]', then mmfuse report RUN.</p>")
    elif epochs or evals:
        parts += _curves(plt, epochs, evals)
    if epochs:
        keys = [k for k in ("epoch", "step", "train/loss", "val/loss", "lr") if any(k in r for r in epochs)]
        parts.append(_table(keys, [[r.get(k, "") for k in keys] for r in epochs]))
    if analysis is None:
        parts.append("<p class='note'>No validation data: the evaluation sections are left out.</p>")
        return "".join(parts) + "</body></html>"
    parts.append(f"<h2>Validation ({html.escape(data_name)}, {analysis.rows} rows)</h2>")
    parts.append(_table(["metric", "value"], [[k, v] for k, v in sorted(analysis.metrics.items())]))
    for name, result in analysis.classification.items():
        parts.append(f"<h2>Task {html.escape(name)}: classes</h2>")
        per_class = result.per_class()
        parts.append(_table(["label", "support", "precision", "recall", "f1"], [[r["label"], r["support"], r["precision"], r["recall"], r["f1"]] for r in per_class]))
        bins, ece = result.calibration()
        parts.append(_table(["true \\ predicted", *result.labels], [[label, *row] for label, row in zip(result.labels, result.confusion)]))
        parts.append(f"<p>Expected calibration error: {ece:.4f} ({CALIBRATION_BINS} bins)</p>")
        if plt is not None:
            parts.append(_confusion_plot(plt, name, result) + _calibration_plot(plt, name, bins, ece))
    if analysis.ablation:
        keys = sorted(analysis.metrics)
        rows = [["all modalities", *[analysis.metrics[k] for k in keys]]]
        rows += [[f"without {encoder}", *[metrics.get(k, float("nan")) for k in keys]] for encoder, metrics in analysis.ablation.items()]
        parts.append("<h2>Modality ablation</h2><p class='note'>Each row removes one modality from every validation row "
                     "through the presence mask (the model sees it as missing).</p>")
        parts.append(_table(["", *keys], rows))
    return "".join(parts) + "</body></html>"


def _few_shot_summary(run_dir: Path) -> dict[str, Any]:
    """The summary row of a run trained with ``data.shots_per_class`` (its ``few_shot.json``)."""
    import json

    file = run_dir / "few_shot.json"
    if not file.is_file():
        return {}
    shots = json.loads(file.read_text(encoding="utf-8"))
    kept = ", ".join(f"{label}: {count} of {shots['available'][label]}" for label, count in shots["kept"].items())
    return {"few-shot training rows": f"{shots['shots_per_class']} per class of column '{shots['column']}' (seed {shots['seed']}): {kept}"}


def build_report(
    run_dir: str | Path, data: str | Path | None = None, registry: Any = None, out: str | Path | None = None,
    batch_size: int = 64,
) -> Path:
    """Write ``report.html`` for a run folder (validation analysis on ``data`` or the run's own
    validation split); return its path."""
    from mmfuse.artifact import load_model
    from mmfuse.cli.model_data import model_data_for
    from mmfuse.data.manifest import read_manifest
    from mmfuse.data.sources import load_splits
    from mmfuse.recipe import load_recipe

    run_dir = Path(run_dir)
    epochs, evals = _read_csv(run_dir / "metrics.csv"), _read_csv(run_dir / "evals.csv")
    model, recipe = load_model(run_dir, registry=registry)
    manifest, data_name = None, ""
    if data is not None:
        manifest, data_name = read_manifest(Path(data), registry=registry, role="--data"), str(data)
    elif (run_dir / "recipe.yaml").is_file():
        splits = load_splits(load_recipe(run_dir / "recipe.yaml", registry=registry), registry)
        if splits.val is not None:
            manifest, data_name = splits.val, "the run's validation split"
    analysis = None
    if manifest is not None:
        loaded = model_data_for(model, recipe, manifest, batch_size=batch_size, num_workers=0, device=torch.device("cpu"), with_targets=True)
        batches = list(loaded.batches())
        if batches:
            analysis = analyse(model, recipe, batches, torch.device("cpu"))
    summary: dict[str, Any] = {"run folder": str(run_dir.resolve()), "encoders": ", ".join(recipe.encoders),
                               "fusion": recipe.fusion.type, "tasks": ", ".join(f"{n} ({s.type})" for n, s in recipe.tasks.items())}
    if epochs:
        summary.update({"epochs": int(epochs[-1].get("epoch", len(epochs))), "optimizer steps": int(epochs[-1].get("step", 0))})
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary.update(_few_shot_summary(run_dir))
    html_text = render(recipe.name, summary, epochs, evals, analysis, _matplotlib(), data_name)
    target = Path(out) if out is not None else run_dir / REPORT_FILE
    temporary = target.with_suffix(".html.tmp")
    temporary.write_text(html_text, encoding="utf-8")
    temporary.replace(target)
    return target
