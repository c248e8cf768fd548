"""Trains slowly in a subprocess and announces when SIGTERM may be sent (test_resume.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.trainer import Trainer
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe


class SlowSteps(Callback):
    def __init__(self, ready: Path) -> None:
        self.ready = ready

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.global_step == 3:
            self.ready.write_text("3")
        time.sleep(0.05)


def main(run_dir: str, ready: str) -> None:
    recipe = tiny_recipe(trainer={"epochs": 50})
    model = tiny_model(recipe)
    trainer = Trainer(model, recipe, SyntheticRows(40), TinyCollate(model), run_dir=Path(run_dir), callbacks=[SlowSteps(Path(ready))])
    result = trainer.fit()
    print(f"STOP_REASON={result.stop_reason} STEP={result.global_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
