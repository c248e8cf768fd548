"""The training engine. Imports no torch: ``mmfuse.recipe`` imports ``mmfuse.engine.config``.

- ``trainer``: :class:`~mmfuse.engine.trainer.Trainer`, the one training loop;
- ``state``: :class:`~mmfuse.engine.state.TrainState`, everything a checkpoint holds;
- ``run_settings``: what a run started with, compared on resume;
- ``callbacks`` / ``loggers``: Lightning-style callbacks and the built-in ones;
- ``checkpoint``: atomic checkpoints and resume; ``schedule``: lr schedules with warmup;
- ``distributed``: torchrun / DDP set-up; ``loading``: samplers and DataLoaders;
- ``step``: the loss module DDP wraps (empty batches) and the optimizer step; ``window``: loss
  bookkeeping between logs, summed over ranks;
- ``evaluation``: loss and per-task metrics; ``assembly``: autocast and the callback list;
- ``stages``: staged unfreezing; ``signals``: SIGTERM/SIGINT handling; ``rng``: seeding.
"""
