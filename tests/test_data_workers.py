"""data.num_workers / prefetch_factor ``auto``: chosen from the machine (cores, torchrun processes),
the dataset's size and its sample cache; explicit values win; the choice is printed at start and
the training is the same with workers as without."""

from __future__ import annotations

import os

import pytest
import torch
from pydantic import ValidationError

from mmfuse.data.config import DataConfig
from mmfuse.data.workers import MAX_WORKERS, TINY_ROWS, plan_loader
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe, weights

AUTO = DataConfig()


def _cores(monkeypatch, count: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)


@pytest.mark.parametrize(
    ("cores", "processes", "workers", "prefetch"),
    [(1, 1, 0, None), (2, 1, 1, 4), (4, 1, 3, 2), (64, 1, MAX_WORKERS, 2), (16, 4, 3, 2), (8, 8, 0, None)],
)
def test_auto_workers_follow_the_cores_per_process(cores, processes, workers, prefetch):
    plan = plan_loader(AUTO, rows=5000, decodes_files=True, cores=cores, processes=processes)
    assert (plan.num_workers, plan.prefetch_factor, plan.persistent_workers) == (workers, prefetch, workers > 0)
    if workers == 0:
        assert "none to spare" in plan.reason


def test_auto_workers_read_the_affinity_and_the_torchrun_world(monkeypatch):
    _cores(monkeypatch, 12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    plan = plan_loader(AUTO, rows=5000, decodes_files=True)
    assert plan.num_workers == 3 and "12 core(s) for 3 processes" in plan.reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert plan_loader(AUTO, rows=5000, decodes_files=True).num_workers == MAX_WORKERS


@pytest.mark.parametrize(
    ("data", "rows", "decodes", "warm", "reason"),
    [
        (AUTO, TINY_ROWS - 1, True, False, "too few"),
        (AUTO, 4 * TINY_ROWS - 4, True, False, "too few"),  # 255 per process of 4
        (DataConfig(cache="memory"), 5000, True, False, "data.cache=memory"),
        (AUTO, 5000, True, True, "warm"),
        (DataConfig(cache="disk"), 5000, True, True, "warm"),
        (AUTO, 5000, False, False, "no encoder reads files"),
    ],
)
def test_auto_uses_no_workers_where_they_cannot_pay_off(data, rows, decodes, warm, reason):
    plan = plan_loader(data, rows=rows, decodes_files=decodes, cache_warm=warm, cores=16, processes=4)
    assert plan.num_workers == 0 and plan.prefetch_factor is None and not plan.persistent_workers
    assert reason in plan.reason


def test_decoding_without_a_warm_cache_gets_workers():
    for data, what in [(DataConfig(cache="off"), "without a cache"), (AUTO, "cold cache")]:
        plan = plan_loader(data, rows=5000, decodes_files=True, cores=8, processes=1)
        assert plan.num_workers == 7 and what in plan.reason
    unknown = plan_loader(AUTO, rows=5000, decodes_files=None, cores=8, processes=1)
    assert unknown.num_workers == 7 and "unknown" in unknown.reason
    assert not plan_loader(AUTO, rows=5000, decodes_files=True, cores=8, processes=1, train=False).persistent_workers


def test_explicit_values_win():
    plan = plan_loader(DataConfig(num_workers=3, prefetch_factor=5), rows=10, decodes_files=False, cores=1, processes=1)
    assert (plan.num_workers, plan.prefetch_factor, plan.reason) == (3, 5, "data.num_workers")
    zero = plan_loader(DataConfig(num_workers=0), rows=10**6, decodes_files=True, cores=64, processes=1)
    assert zero.num_workers == 0 and zero.prefetch_factor is None
    fixed_prefetch = plan_loader(DataConfig(prefetch_factor=7), rows=5000, decodes_files=True, cores=4, processes=1)
    assert (fixed_prefetch.num_workers, fixed_prefetch.prefetch_factor) == (3, 7)
    assert not plan_loader(DataConfig(num_workers=2, persistent_workers=False), rows=5000, decodes_files=True).persistent_workers


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_workers": -1}, "data.num_workers must be auto or a whole number >= 0, got -1"),
        ({"num_workers": "many"}, "data.num_workers must be auto or a whole number >= 0, got 'many'"),
        ({"prefetch_factor": 0}, "data.prefetch_factor must be auto or a whole number >= 1, got 0"),
        ({"num_workers": 0, "prefetch_factor": 4}, "data.prefetch_factor=4 needs DataLoader workers"),
    ],
)
def test_bad_values_are_clear_errors(values, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig(**values)


def _fit(tmp_path, name, *overrides, rows=TINY_ROWS + 8):
    from mmfuse.engine.trainer import Trainer

    recipe = tiny_recipe("trainer.epochs=1", "trainer.max_steps=6", "trainer.num_threads=1", *overrides)
    model = tiny_model(recipe)
    trainer = Trainer.from_recipe(recipe, model, SyntheticRows(rows), TinyCollate(model), run_dir=tmp_path / name)
    trainer.fit()
    return trainer, weights(model)


def test_the_choice_is_printed_and_used_and_trains_like_no_workers(tmp_path, monkeypatch, capsys):
    _cores(monkeypatch, 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    trainer, with_worker = _fit(tmp_path, "auto", "trainer.num_threads=auto")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("data loading:"))
    assert line.startswith("data loading: 1 worker process(es), prefetch 4, persistent (auto: a dataset of unknown cost; 2 core(s)")
    assert trainer.train_loader.num_workers == 1 and trainer.train_loader.prefetch_factor == 4
    threads = next(line for line in out.splitlines() if line.startswith("threads:"))
    assert "1 intra-op" in threads and "- 1 loader worker(s)" in threads  # the worker's core is left to it
    _, without = _fit(tmp_path, "none", "data.num_workers=0")
    assert capsys.readouterr().out.count("data loading: 0 worker process(es) (data.num_workers)") == 1
    # workers are seeded from (seed, epoch, rank): same batches, same dropout, same weights
    for key, value in without.items():
        assert torch.equal(value, with_worker[key]), key


def test_a_small_dataset_trains_in_the_main_process(tmp_path, monkeypatch, capsys):
    _cores(monkeypatch, 8)
    trainer, _ = _fit(tmp_path, "small", rows=40)
    assert trainer.train_loader.num_workers == 0
    assert "data loading: 0 worker process(es) (auto: 40 rows per process, too few" in capsys.readouterr().out
