"""report.html: written by every run, rebuilt by `mmfuse report`, with every section for a
classification run; its numbers checked against hand computations."""

from __future__ import annotations

import re

import pytest

from mmfuse.cli import main
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.run import train
from mmfuse.run_report import ClassificationAnalysis
from tests.test_compression import RECIPE, write_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    raw = dict(RECIPE, data={"train": write_data(folder, 96, 1), "val": write_data(folder, 48, 2), "batch_size": 16})
    outcome = train(parse_recipe(raw, load_registry()), run_dir=folder / "run", registry=load_registry())
    return outcome.run_dir


def _cells(html_text: str, row_label: str) -> list[str]:
    row = re.search(rf"<tr><td>{re.escape(row_label)}</td>(.*?)</tr>", html_text)
    assert row, row_label
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_every_run_writes_a_self_contained_report_with_every_section(run):
    text = (run / "report.html").read_text()
    for section in ("Summary", "Training curves", "Validation", "Task label: classes", "Expected calibration error", "Modality ablation"):
        assert section in text, section
    assert text.count("data:image/png;base64,") >= 5  # loss, metrics, lr, confusion, calibration
    assert "<script" not in text and "http://" not in text and "https://" not in text  # no server, no network


def test_the_ablation_shows_which_modality_carries_the_task(run):
    """In the generated data only encoder 'a' carries the label ('b' is noise)."""
    text = (run / "report.html").read_text()
    header = re.search(r"<h2>Modality ablation</h2>.*?<tr>(.*?)</tr>", text, re.S).group(1)
    columns = re.findall(r"<th>(.*?)</th>", header)[1:]
    accuracy = columns.index("label/accuracy")
    full = float(_cells(text, "all modalities")[accuracy])
    without_a = float(_cells(text, "without a")[accuracy])
    without_b = float(_cells(text, "without b")[accuracy])
    assert full >= 0.8
    assert without_a < full - 0.2  # the informative modality matters
    assert abs(without_b - full) <= 0.1  # the noise does not


def test_mmfuse_report_rebuilds_it(run, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "Modality ablation" in out.read_text()
    assert main(["report", str(tmp_path / "missing-run")]) == 2


def test_per_class_metrics_and_calibration_match_a_hand_computation():
    result = ClassificationAnalysis(
        labels=["cat", "dog"],
        confusion=[[3, 1], [2, 4]],  # true cat: 3 right, 1 as dog; true dog: 2 as cat, 4 right
        confidence=[0.95, 0.95, 0.55, 0.55],
        correct=[True, False, True, True],
    )
    cat, dog = result.per_class()
    assert cat["precision"] == pytest.approx(3 / 5) and cat["recall"] == pytest.approx(3 / 4)
    assert dog["precision"] == pytest.approx(4 / 5) and dog["recall"] == pytest.approx(4 / 6)
    assert cat["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    bins, ece = result.calibration()
    assert [b["count"] for b in bins] == [2, 2]
    # bin (0.5, 0.6]: confidence 0.55, accuracy 1.0; bin (0.9, 1.0]: confidence 0.95, accuracy 0.5
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
