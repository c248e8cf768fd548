"""The data-wait share in the training log: time spent in the loader's ``next()`` per epoch."""

from __future__ import annotations

import csv
import time

from mmfuse.profiling.data_wait import TimedLoader


class SlowLoader:
    """Three batches, each taking ``delay`` seconds to produce."""

    batch_size = 4

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __iter__(self):
        for index in range(3):
            time.sleep(self.delay)
            yield {"index": index}

    def __len__(self) -> int:
        return 3


def test_timed_loader_counts_only_the_time_inside_next():
    timed = TimedLoader(SlowLoader(0.05))
    consumer_time = 0.0
    for batch in timed:
        started = time.perf_counter()
        time.sleep(0.05)  # the "training step": not data wait
        consumer_time += time.perf_counter() - started
    assert 0.15 <= timed.waited < 0.15 + 0.5 * consumer_time
    assert timed.batch_size == 4 and len(timed) == 3  # the loader's attributes pass through


def test_each_epoch_row_gets_its_data_wait_share(demo_recipe, tmp_path, capsys):
    from mmfuse.run import train

    recipe = demo_recipe("trainer.epochs=2", "data.batch_size=6", "data.cache=memory")
    outcome = train(recipe, run_dir=tmp_path / "run")
    with open(outcome.run_dir / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/data_wait_share")]
    assert len(rows) == 2
    first, second = (float(row["train/data_wait_share"]) for row in rows)
    assert 0 < second < first < 1  # epoch 1 decodes every file; epoch 2 reads the memory cache
    assert "waited" in capsys.readouterr().out
