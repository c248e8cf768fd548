"""The preprocessed-sample cache returns exactly what preprocessing returns, invalidates exactly
what a changed file or parameter affects, and stays consistent under concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.cache.shards import PARTIAL_SUFFIX, SHARD_SUFFIX


def _train_dataset(recipe):
    from mmfuse.run import prepare

    return prepare(recipe).train


def _all_items(dataset):
    return [dataset[index] for index in range(len(dataset))]


def _assert_same_samples(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert set(got.inputs) == set(want.inputs)
        for encoder, tensors in want.inputs.items():
            assert set(got.inputs[encoder]) == set(tensors), encoder
            for name, tensor in tensors.items():
                cached = got.inputs[encoder][name]
                assert cached.dtype == tensor.dtype and cached.shape == tensor.shape, (encoder, name)
                assert torch.equal(cached, tensor), f"{encoder}.{name} differs from uncached preprocessing"


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_returns_what_preprocessing_returns(demo_recipe, tmp_path, mode):
    uncached = _all_items(_train_dataset(demo_recipe("data.cache=off")))
    dataset = _train_dataset(demo_recipe(f"data.cache={mode}", f"data.cache_dir={tmp_path}"))
    cache = dataset.sample_cache
    cold = _all_items(dataset)
    assert (cache.hits, cache.misses) == (0, 4 * len(dataset))
    warm = _all_items(dataset)
    assert cache.hits == 4 * len(dataset)
    _assert_same_samples(cold, uncached)
    _assert_same_samples(warm, uncached)
    if mode == "disk":
        cache.flush()
        fresh = _train_dataset(demo_recipe("data.cache=disk", f"data.cache_dir={tmp_path}"))
        from_shards = _all_items(fresh)
        assert (fresh.sample_cache.hits, fresh.sample_cache.misses) == (4 * len(fresh), 0)
        _assert_same_samples(from_shards, uncached)


def test_a_changed_file_or_parameter_invalidates_exactly_its_entries(demo_recipe, demo_folder, tmp_path):
    from mmfuse.testing.media import write_png

    options = ("data.cache=disk", f"data.cache_dir={tmp_path}")
    first = _train_dataset(demo_recipe(*options))
    _all_items(first)
    first.sample_cache.flush()

    # one image file rewritten with new pixels: only that entry is recomputed
    row = first.manifest.rows[0]
    image = first.manifest.resolve(row.values["image"])
    before = first[0].inputs["image"]["pixels"]
    stat = image.stat()
    write_png(image, size=(32, 32), seed=123)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = _train_dataset(demo_recipe(*options))
    items = _all_items(changed)
    assert changed.sample_cache.misses == 1
    assert not torch.equal(items[0].inputs["image"]["pixels"], before)
    uncached = _train_dataset(demo_recipe("data.cache=off"))[0]
    assert torch.equal(items[0].inputs["image"]["pixels"], uncached.inputs["image"]["pixels"])
    changed.sample_cache.flush()

    # a changed preprocessing parameter: every audio entry is recomputed, nothing else
    retuned = _train_dataset(demo_recipe(*options, "encoders.audio.sample_rate=4000"))
    items = _all_items(retuned)
    assert retuned.sample_cache.misses == len(retuned)
    assert retuned.sample_cache.hits == 3 * len(retuned)
    assert items[1].inputs["audio"]["waveform"].shape[0] * 2 == first[1].inputs["audio"]["waveform"].shape[0]
    # a parameter the preprocessor does not use (the encoder computes the mel spectrogram) keeps the entries
    same = _train_dataset(demo_recipe(*options, "encoders.audio.n_mels=16"))
    _all_items(same)
    assert same.sample_cache.misses == 0


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mmfuse.demo.runner import default_recipe_path, demo_overrides
    from mmfuse.recipe import load_recipe
    from mmfuse.run import prepare

    demo, cache, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    recipe = load_recipe(default_recipe_path(), [*demo_overrides(demo), "data.cache=disk", f"data.cache_dir={cache}"])
    dataset = prepare(recipe).train
    dataset.sample_cache.flush_entries = 3  # many small shards, interleaved with the other writer's
    order = list(range(len(dataset)))
    order = order[start:] + order[:start]  # the two writers meet in the middle
    for index in order:
        dataset[index]
    # no explicit flush: the process-exit finalizer writes the last shard
    """
)


@pytest.mark.slow
def test_two_processes_writing_one_cache_leave_it_consistent(demo_recipe, demo_folder, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER, encoding="utf-8")
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen([sys.executable, str(script), str(demo_folder), str(cache), str(start)], env=env)
        for start in (0, 5)
    ]
    for writer in writers:
        assert writer.wait(timeout=240) == 0

    folders = [path for path in (cache / "samples").iterdir() if path.is_dir()]
    assert len(folders) == 4  # one namespace per encoder, shared by both writers
    assert not list(cache.rglob(f"*{PARTIAL_SUFFIX}")), "a writer left a partial file"
    from safetensors import safe_open

    for shard in cache.rglob(f"*{SHARD_SUFFIX}"):
        with safe_open(str(shard), framework="pt") as handle:
            assert len(list(handle.keys())) > 0
    shards_per_folder = [len(list(folder.glob(f"*{SHARD_SUFFIX}"))) for folder in folders]
    assert min(shards_per_folder) >= 4, "both writers should have written shards"

    reader = _train_dataset(demo_recipe("data.cache=disk", f"data.cache_dir={cache}"))
    items = _all_items(reader)
    assert (reader.sample_cache.hits, reader.sample_cache.misses) == (4 * len(reader), 0)
    _assert_same_samples(items, _all_items(_train_dataset(demo_recipe("data.cache=off"))))


def test_yaml_off_and_unknown_modes(demo_recipe):
    from mmfuse.recipe_problems import RecipeError

    assert demo_recipe("data.cache=off").data.cache == "off"
    with pytest.raises(RecipeError, match="data.cache"):
        demo_recipe("data.cache=ram")


def test_a_consumer_working_in_place_does_not_change_the_cache(demo_recipe):
    """Augmentation runs after the lookup and may write into what it gets."""
    dataset = _train_dataset(demo_recipe("data.cache=memory"))
    first = dataset[0].inputs["image"]["pixels"]
    first.add_(1.0)  # a consumer working in place must not corrupt the cache
    again = dataset[0].inputs["image"]["pixels"]
    assert torch.equal(again, first - 1.0)
    assert np.isfinite(again.numpy()).all()


def test_auto_workers_and_cache_follow_whether_the_disk_cache_is_warm(demo_recipe, tmp_path, monkeypatch):
    from mmfuse.data import workers

    monkeypatch.setattr(workers, "TINY_ROWS", 1)  # the demo data is small
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    recipe = ("data.num_workers=auto", "data.cache=auto", f"data.cache_dir={tmp_path}")
    cold = _train_dataset(demo_recipe(*recipe))
    assert cold.loader_plan.num_workers == 3 and "cold cache" in cold.loader_plan.reason
    assert cold.sample_cache.mode == "disk"  # shared by the workers
    _all_items(cold)
    cold.sample_cache.flush()
    warm = _train_dataset(demo_recipe(*recipe))
    assert warm.loader_plan.num_workers == 0 and "warm" in warm.loader_plan.reason
    assert warm.sample_cache.mode == "disk"  # read where it is warm, not a cold memory cache
    _all_items(warm)
    assert warm.sample_cache.misses == 0
    fixed = _train_dataset(demo_recipe(*recipe, "data.num_workers=2"))
    assert fixed.loader_plan.num_workers == 2 and fixed.loader_plan.reason == "data.num_workers"
    in_memory = _train_dataset(demo_recipe("data.num_workers=auto", "data.cache=memory"))
    assert in_memory.loader_plan.num_workers == 0 and in_memory.sample_cache.mode == "memory"
