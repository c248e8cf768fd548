"""``mmfuse train`` stopped by SIGTERM / Ctrl-C: a non-zero exit (143 / 130), a checkpoint and the
command that resumes it, but no ``model/`` and no test evaluation unless asked; a signal during
start-up prints one line."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from mmfuse.cli import main
from mmfuse.engine.callbacks import Checkpointing
from tests.engine.tiny import SyntheticRows


@pytest.fixture()
def project(tmp_path):
    rows = SyntheticRows(24)
    lines = [json.dumps({"feats": rows[i]["x"], "extra": rows[i]["x"], "label": rows[i]["label"]}) for i in range(24)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:16]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[16:]) + "\n")
    recipe = {
        "name": "tiny",
        "data": {"train": "train.jsonl", "test": "test.jsonl", "batch_size": 4},
        "encoders": {"feats": {"type": "vector", "input_dim": 6, "hidden_dim": 8, "output_dim": 8},
                     "extra": {"type": "vector", "input_dim": 6, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8},
        "tasks": {"label": {"type": "classification"}},
        "trainer": {"epochs": 3, "device": "cpu", "progress": "off", "tensorboard": "off"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path


@pytest.fixture()
def signal_at_step_2(monkeypatch):
    """Sends the chosen signal to this process right after optimizer step 2."""
    chosen = {}
    original = Checkpointing.on_train_batch_end

    def on_train_batch_end(self, trainer, loss):
        original(self, trainer, loss)
        if trainer.global_step == 2:
            os.kill(os.getpid(), chosen["signal"])

    monkeypatch.setattr(Checkpointing, "on_train_batch_end", on_train_batch_end)
    return chosen


@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_with_its_exit_code_a_checkpoint_and_no_model(project, signal_at_step_2, capsys, number, code):
    signal_at_step_2["signal"] = number
    run = project / "run"
    assert main(["train", str(project / "recipe.yaml"), "trainer.epochs=3", "--run-dir", str(run)]) == code
    err = capsys.readouterr()
    name = signal.Signals(number).name
    assert f"interrupted by {name} at step 2" in err.err
    assert f"resume with: mmfuse train {project / 'recipe.yaml'} trainer.epochs=3 --resume {run}" in err.err
    assert "test/" not in err.out  # no test evaluation
    assert not (run / "model").exists()
    assert (run / "checkpoints" / "step-00000002").is_dir()

    signal_at_step_2["signal"] = 0  # signal 0 sends nothing: the resumed run completes
    assert main(["train", str(project / "recipe.yaml"), "trainer.epochs=3", "--resume", str(run)]) == 0
    assert (run / "model" / "mmfuse.json").is_file()
    assert "test/label/accuracy" in capsys.readouterr().out


def test_export_on_interrupt_writes_the_model_and_still_exits_non_zero(project, signal_at_step_2, capsys):
    signal_at_step_2["signal"] = signal.SIGTERM
    run = project / "run"
    assert main(["train", str(project / "recipe.yaml"), "--run-dir", str(run), "--export-on-interrupt"]) == 143
    assert (run / "model" / "mmfuse.json").is_file()
    assert "test/label/accuracy" in capsys.readouterr().out


def test_a_signal_during_start_up_prints_one_line(project, monkeypatch, capsys):
    import mmfuse.run

    original = mmfuse.run.prepare

    def prepare(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(mmfuse.run, "prepare", prepare)
    assert main(["train", str(project / "recipe.yaml"), "--run-dir", str(project / "run")]) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["interrupted by SIGTERM before training started; nothing was trained"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's handlers are put back
