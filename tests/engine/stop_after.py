"""A callback that ends a fit after N optimizer steps: a kill at a step boundary, simulated."""

from __future__ import annotations

from mmfuse.engine.callbacks import Callback


class StopAfter(Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.global_step == self.steps:
            trainer.request_stop("killed_by_test")
