"""Does the fused model beat its best modality? Fused accuracy with and without each imbalance
tool, against each modality alone and against the best-available-modality oracle, over seeds.

    .venv/bin/python benchmarks/imbalance.py --seeds 0 1 2 --out imbalance-results.json

The data are generated (three ``mmfuse/vector`` modalities, six classes), so each modality alone
is partial:

- ``speech``: strong (a linear class cue, little noise) but present on only ~60% of the rows;
- ``image``: on every row without speech and on half of the others; its cue is a class direction
  with a random sign per row (not linearly separable: slower to learn), with more noise;
- ``text``: weak (much noise), on ~60% of the rows.

Single-modality models are trained and evaluated on the rows that have their modality. The oracle
predicts each validation row with the single-modality model of the best modality the row has
(speech, else image, else text). Every fused model is trained on all training rows and evaluated
on all validation rows; so is the oracle. Accuracy does not depend on the machine's load; the
wall times printed do (they were taken on a shared, busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 6
DIM = 16
MODALITIES = ("speech", "image", "text")
ORACLE_ORDER = ("speech", "image", "text")


# --------------------------------------------------------------------------- data


def generate_rows(count: int, seed: int, prototypes: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``count`` rows ``{"speech": [..] | None, "image": .., "text": .., "label": int}``."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        label = int(rng.integers(CLASSES))
        has_speech = rng.random() < 0.6
        has_image = (not has_speech) or rng.random() < 0.5
        has_text = rng.random() < 0.6
        speech = prototypes["speech"][label] + 0.45 * rng.standard_normal(DIM)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        image = sign * prototypes["image"][label] + 0.55 * rng.standard_normal(DIM)
        text = prototypes["text"][label] + 1.6 * rng.standard_normal(DIM)
        rows.append(
            {
                "speech": _round(speech) if has_speech else None,
                "image": _round(image) if has_image else None,
                "text": _round(text) if has_text else None,
                "label": label,
            }
        )
    return rows


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def make_prototypes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10_000 + seed)
    return {name: rng.standard_normal((CLASSES, DIM)) / np.sqrt(DIM) * 2.0 for name in MODALITIES}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- recipes

def configurations() -> dict[str, dict[str, Any]]:
    """Fused configurations: label -> additions to the recipe's fusion, task and trainer."""
    # every option at its defaults: modality_dropout {p: 0.2, min_present: 1}, unimodal_aux
    # {weight: 0.3}, gradient_modulation {alpha: 0.5, noise: true}, modality_lr {gamma: 1}
    aux = {"unimodal_aux": {}}
    dropout = {"modality_dropout": {}}
    return {
        "fused (concat)": {},
        "+ modality dropout": {"fusion": dropout},
        "+ unimodal aux": {"task": aux},
        "+ OGM-GE (with aux)": {"task": aux, "trainer": {"gradient_modulation": {}}},
        "+ balanced lr (with aux)": {"task": aux, "trainer": {"modality_lr": {}}},
        "dropout + aux (recommended)": {"fusion": dropout, "task": aux},
        "all four": {"fusion": dropout, "task": aux, "trainer": {"gradient_modulation": {}, "modality_lr": {}}},
        "late-fusion ensemble": {"fusion_type": {"type": "mmfuse/ensemble", "num_classes": CLASSES}},
    }


def recipe_dict(encoders: list[str], train: Path, val: Path, seed: int, extra: dict[str, Any], epochs: int) -> dict[str, Any]:
    encoder = {"type": "mmfuse/vector", "input_dim": DIM, "hidden_dim": 64, "output_dim": 32}
    fusion = extra.get("fusion_type") or {"type": "mmfuse/concat", "projection_dim": 32, "hidden_dims": [64], "output_dim": 32}
    fusion = {**fusion, **extra.get("fusion", {})}
    task = {"type": "mmfuse/classification", "labels": list(range(CLASSES)), **extra.get("task", {})}
    return {
        "name": "imbalance",
        "seed": seed,
        "encoders": {name: dict(encoder) for name in encoders},
        "fusion": fusion,
        "tasks": {"label": task},
        "data": {"train": str(train), "val": str(val), "batch_size": 64},
        "optimizer": {"name": "adamw", "lr": 2e-3},
        "trainer": {
            "epochs": epochs,
            "progress": "off",
            "tensorboard": "off",
            "log_every_steps": 1000,
            "device": "cpu",
            "checkpoint": {"keep_best": False, "keep_last": 1},
            **extra.get("trainer", {}),
        },
    }


def train_and_predict(raw: dict[str, Any], folder: Path, rows: list[dict[str, Any]]) -> tuple[list[Any], float, dict]:
    """Train the recipe into ``folder``; return (predicted labels of ``rows``, seconds, diagnostics)."""
    import contextlib
    import io

    import mmfuse
    from mmfuse.recipe import parse_recipe
    from mmfuse.run import train

    recipe = parse_recipe(raw)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = train(recipe, run_dir=folder)
    seconds = time.perf_counter() - started
    predictor = mmfuse.load(outcome.model_dir)
    predictions = [p["label"] for p in predictor.predict(rows)]
    report_file = folder / "modalities.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return predictions, seconds, report


def accuracy(predictions: list[Any], rows: list[dict[str, Any]], keep: list[bool] | None = None) -> float:
    pairs = [(p, r["label"]) for i, (p, r) in enumerate(zip(predictions, rows)) if keep is None or keep[i]]
    return sum(p is not None and int(p) == int(t) for p, t in pairs) / max(1, len(pairs))


def run_seed(seed: int, folder: Path, epochs: int, train_rows: int, val_rows: int, only: list[str] | None) -> dict[str, Any]:
    prototypes = make_prototypes(seed)
    train = generate_rows(train_rows, seed, prototypes)
    val = generate_rows(val_rows, 1_000 + seed, prototypes)
    no_speech = [row["speech"] is None for row in val]
    result: dict[str, Any] = {"seed": seed, "accuracy": {}, "accuracy_without_speech": {}, "seconds": {}}

    # each modality alone, trained and evaluated on the rows that have it
    singles: dict[str, list[Any]] = {}
    for name in MODALITIES:
        subset_train = [{name: r[name], "label": r["label"]} for r in train if r[name] is not None]
        subset_val = [{name: r[name], "label": r["label"]} for r in val if r[name] is not None]
        train_path = write_jsonl(folder / f"{name}-train.jsonl", subset_train)
        val_path = write_jsonl(folder / f"{name}-val.jsonl", subset_val)
        raw = recipe_dict([name], train_path, val_path, seed, {}, epochs)
        has = [r[name] is not None for r in val]
        predicted, seconds, _ = train_and_predict(raw, folder / f"single-{name}", [{name: r[name]} for r in val if r[name] is not None])
        answers = iter(predicted)
        predictions = [next(answers) if present else None for present in has]
        singles[name] = predictions
        result["accuracy"][f"{name} alone (its rows)"] = accuracy(predictions, val, has)
        result["seconds"][f"{name} alone"] = seconds

    oracle = []
    for index, row in enumerate(val):
        best = next(name for name in ORACLE_ORDER if row[name] is not None)
        oracle.append(singles[best][index])
    result["accuracy"]["best-available-modality oracle"] = accuracy(oracle, val)
    result["accuracy_without_speech"]["best-available-modality oracle"] = accuracy(oracle, val, no_speech)

    train_path = write_jsonl(folder / "train.jsonl", train)
    val_path = write_jsonl(folder / "val.jsonl", val)
    for label, extra in configurations().items():
        if only and label not in only:
            continue
        raw = recipe_dict(list(MODALITIES), train_path, val_path, seed, extra, epochs)
        run_folder = folder / ("fused-" + "".join(c if c.isalnum() else "_" for c in label))
        predictions, seconds, report = train_and_predict(raw, run_folder, [{k: r[k] for k in MODALITIES} for r in val])
        result["accuracy"][label] = accuracy(predictions, val)
        result["accuracy_without_speech"][label] = accuracy(predictions, val, no_speech)
        result["seconds"][label] = seconds
        result.setdefault("diagnostics", {})[label] = report
    return result


def summarise(results: list[dict[str, Any]]) -> str:
    labels = list(results[0]["accuracy"])
    lines = [
        f"{'model':<34}{'val accuracy (mean ± sd)':>26}{'rows without speech':>22}{'train s':>9}",
    ]
    for label in labels:
        values = [r["accuracy"][label] for r in results]
        without = [r["accuracy_without_speech"].get(label) for r in results]
        seconds = [r["seconds"].get(label.replace(" (its rows)", "")) for r in results]
        cell = f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"
        w = f"{statistics.mean(without):.4f}" if None not in without else "-"
        s = f"{statistics.mean(seconds):.1f}" if None not in seconds else "-"
        lines.append(f"{label:<34}{cell:>26}{w:>22}{s:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--val-rows", type=int, default=1500)
    parser.add_argument("--only", nargs="*", help="fused configurations to run (default: all)")
    parser.add_argument("--out", type=Path, help="write every number as JSON here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            results.append(run_seed(seed, folder, args.epochs, args.train_rows, args.val_rows, args.only))
            print(f"seed {seed}: " + json.dumps({k: round(v, 4) for k, v in results[-1]["accuracy"].items()}), flush=True)
    print(summarise(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
