"""Learning-rate curves of every scheduler, with warmup, and groups added mid-run."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.engine.config import SchedulerConfig
from mmfuse.engine.schedule import LRSchedule, lr_factor


def curve(total: int = 10, **config) -> list[float]:
    cfg = SchedulerConfig(**config)
    return [round(lr_factor(cfg, step, total), 6) for step in range(total)]


def test_warmup_then_constant():
    assert curve(name="constant", warmup_steps=4, total=6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decays_to_floor_after_warmup():
    values = curve(name="linear", warmup_steps=2, min_lr_ratio=0.1, total=10)
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0
    assert values[-1] == pytest.approx(0.1 + 0.9 * (1 - 7 / 8))
    assert all(a >= b for a, b in zip(values[2:], values[3:]))


def test_cosine_shape():
    values = curve(name="cosine", total=9)
    assert values[0] == 1.0
    assert values[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 9)), abs=1e-6)
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 9)), abs=1e-6)


def test_exponential_and_step():
    assert curve(name="exponential", gamma=0.5, total=4) == [1.0, 0.5, 0.25, 0.125]
    assert curve(name="step", gamma=0.1, step_size=2, total=6) == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


def test_warmup_ratio():
    assert curve(name="constant", warmup_ratio=0.2, total=10)[:3] == [0.5, 1.0, 1.0]


def test_schedule_sets_every_group_including_added_ones():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1.0}], lr=1.0)
    schedule = LRSchedule(optimizer, SchedulerConfig(name="exponential", gamma=0.5), total_steps=10)
    schedule.step()
    optimizer.add_param_group({"params": [b], "lr": 0.1, "initial_lr": 0.1})
    schedule.apply()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.05])
    state = schedule.state_dict()
    restored = LRSchedule(optimizer, SchedulerConfig(name="exponential", gamma=0.5), total_steps=10)
    restored.load_state_dict(state)
    restored.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.25, 0.025])
