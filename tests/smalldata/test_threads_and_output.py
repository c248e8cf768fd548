"""trainer.num_threads / interop_threads (a default from the machine and the loader workers,
printed at start), the slow-step warning, and silenced third-party progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from mmfuse.engine.config import TrainerConfig
from mmfuse.engine.step_time import SlowStepWarning
from mmfuse.engine.threads import apply_thread_settings, plan_threads


def test_auto_threads_leave_a_core_per_loader_worker_and_share_between_processes():
    assert plan_threads("auto", "auto", 0, cores=8, processes=1, environ={}).intra_op == 8
    assert plan_threads("auto", "auto", 2, cores=8, processes=1, environ={}).intra_op == 6
    assert plan_threads("auto", "auto", 2, cores=2, processes=1, environ={}).intra_op == 1
    assert plan_threads("auto", "auto", 1, cores=16, processes=4, environ={}).intra_op == 3
    plan = plan_threads("auto", "auto", 0, cores=16, processes=1, environ={"OMP_NUM_THREADS": "3"})
    assert (plan.intra_op, plan.inter_op, plan.reason) == (3, 3, "OMP_NUM_THREADS")
    assert plan_threads(5, 2, 4, cores=2, environ={}).intra_op == 5
    assert plan_threads("auto", "auto", 0, cores=64, environ={}).inter_op == 4


def test_thread_settings_are_applied_and_printed():
    lines: list[str] = []
    before = torch.get_num_threads()
    try:
        config = TrainerConfig(num_threads=2, interop_threads=torch.get_num_interop_threads())
        apply_thread_settings(config, 0, lines.append)
        assert torch.get_num_threads() == 2
        assert lines and lines[0].startswith("threads: 2 intra-op") and "trainer.num_threads" in lines[0]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValidationError):
        TrainerConfig(num_threads=0)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _steps(watch, clock, trainer, durations):
    for duration in durations:
        clock.now += duration
        watch.on_train_batch_end(trainer, torch.tensor(0.0))


def test_slow_steps_warn_once_per_doubling_and_evaluation_time_is_not_a_step():
    clock, logged = _Clock(), []
    trainer = SimpleNamespace(log=logged.append)
    watch = SlowStepWarning(factor=5, baseline_steps=3, window=3, clock=clock)
    watch.on_fit_start(trainer)
    _steps(watch, clock, trainer, [9.0, 1.0, 1.2, 0.8])  # the first (warm-up) step is ignored
    assert watch.baseline == 1.0
    clock.now += 100  # a long evaluation between two steps
    watch.on_validation_end(trainer, {})
    _steps(watch, clock, trainer, [1.1, 0.9, 1.0, 4.0])
    assert not logged
    _steps(watch, clock, trainer, [6.0, 6.0, 6.0])
    assert len(logged) == 1 and "6.00 s, 6x the first ones (1.00 s)" in logged[0] and "num_threads" in logged[0]
    _steps(watch, clock, trainer, [7.0, 7.0, 7.0])
    assert len(logged) == 1, "no repeat until the slowdown doubles"
    _steps(watch, clock, trainer, [13.0, 13.0, 13.0])
    assert len(logged) == 2


def test_progress_bars_are_silenced_in_processes_and_libraries_imported_later():
    code = (
        "from mmfuse.progress_bars import silence_third_party_progress_bars as s; s();"
        "import transformers.utils.logging as t, huggingface_hub.utils as h;"
        "print(t.is_progress_bar_enabled(), h.are_progress_bars_disabled())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_train_command_has_a_verbose_flag():
    done = subprocess.run([sys.executable, "-m", "mmfuse", "train", "--help"], capture_output=True, text=True, timeout=60)
    assert "--verbose" in done.stdout


@pytest.mark.parametrize(
    "command", [["chain", "missing-chain.yaml"], ["tune", "missing-recipe.yaml", "--trials", "1"]]
)
def test_chain_and_tune_silence_progress_bars_unless_verbose(command, monkeypatch, tmp_path):
    from mmfuse.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # records the original, restored afterwards
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    assert main([*command, "--verbose"]) == 2  # the file is missing: the command stops at reading it
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert main(command) == 2
    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"
