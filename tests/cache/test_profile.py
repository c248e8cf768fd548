"""``mmfuse profile``: the breakdown adds up, names every part, and the advice follows the numbers."""

from __future__ import annotations

import json

import pytest

from mmfuse.profiling.advice import format_report, suggestions
from mmfuse.profiling.steps import ProfileReport, profile_recipe

ENCODERS = ("text", "image", "audio", "video")


def test_profile_times_every_part_of_the_step(demo_recipe):
    recipe = demo_recipe("data.batch_size=4", "encoders.image.freeze=true")
    report = profile_recipe(recipe, steps=4, warmup=1)
    assert report.steps == 4 and report.samples == 16
    for name in ENCODERS:
        assert report.modules_forward[f"encoder/{name}"] > 0
    assert report.modules_forward["fusion"] > 0 and "task/label" in report.modules_forward
    # a frozen encoder has no backward; the trained ones do
    assert "encoder/image" not in report.encoders_backward
    for name in ("text", "audio", "video"):
        assert report.encoders_backward[f"encoder/{name}"] > 0
    assert sum(report.encoders_backward.values()) <= report.backward
    phases = report.data_wait + report.forward + report.backward + report.optimizer
    assert 0.8 * report.wall <= phases <= report.wall * 1.0001
    assert sum(report.modules_forward.values()) <= report.forward * 1.0001
    assert report.peak_memory_mb > 0
    text = format_report(report)
    assert "samples/s" in text and "encoder/video" in text and "data wait" in text


def _report(**changes) -> ProfileReport:
    values = dict(
        steps=10, samples=80, wall=10.0, data_wait=0.2, forward=5.0, backward=4.0, optimizer=0.8,
        modules_forward={"encoder/image": 4.0, "fusion": 0.5}, frozen_encoders=[],
        settings={"data.cache": "auto", "data.feature_cache": "off", "data.num_workers": 0, "cpus": 4, "trainer.precision": "fp32"},
    )
    values.update(changes)
    return ProfileReport(**values)


def test_advice_follows_the_measured_shares():
    waiting = _report(data_wait=6.0, settings={**_report().settings, "data.cache": "off"})
    advice = " | ".join(suggestions(waiting))
    assert "data.cache=auto" in advice and "data.num_workers=3" in advice and "60%" in advice

    frozen = _report(frozen_encoders=["image"])
    advice = " | ".join(suggestions(frozen))
    assert "data.feature_cache=auto" in advice and "image" in advice

    assert all("feature_cache" not in line for line in suggestions(_report(frozen_encoders=["image"], settings={**_report().settings, "data.feature_cache": "auto"})))
    assert suggestions(_report())[0].startswith("the step is compute-bound")


def test_cli_prints_the_table_and_writes_json(demo_recipe, demo_folder, tmp_path, capsys):
    from mmfuse.cli import main
    from mmfuse.demo.runner import default_recipe_path, demo_overrides

    out = tmp_path / "profile.json"
    code = main(["profile", str(default_recipe_path()), *demo_overrides(demo_folder), "data.num_workers=0",
                 "data.batch_size=4", "--steps", "2", "--warmup", "0", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 steps, 8 samples" in printed and "suggestion:" in printed
    saved = json.loads(out.read_text())
    assert saved["samples"] == 8 and saved["samples_per_sec"] > 0 and saved["suggestions"]


@pytest.mark.parametrize("steps", ["0"])
def test_cli_rejects_zero_steps(demo_folder, steps, capsys):
    from mmfuse.cli import main
    from mmfuse.demo.runner import default_recipe_path

    assert main(["profile", str(default_recipe_path()), "--steps", steps]) == 2
    assert "--steps" in capsys.readouterr().err
