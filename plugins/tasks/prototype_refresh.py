"""The callback that keeps a :class:`~mmfuse_plugins.tasks.prototype.PrototypeTask`'s prototypes
equal to the class means of the training rows' fused vectors under the current weights.

When: at the start of every fit (also a resumed one, after its weights are restored), and — only
while some encoder or the fusion head trains, since otherwise the fused vectors cannot change —
after the optimizer step that comes before an evaluation: the last step of an epoch, a step that
``trainer.eval_every_steps`` evaluates after, and the ``max_steps`` step. So every evaluation,
every epoch-end checkpoint and the saved model use prototypes of the weights they hold.

How: one pass over the training split in eval mode without gradients (no dropout, no BatchNorm
updates, no augmentation, no modality dropout), each rank over its share of the rows, then the
per-class sums and counts are summed across ranks, so every rank holds the same prototypes (under
FSDP inside ``trainer.evaluating()``, which gathers the parameters once). The pass runs the model's
forward (the frozen-encoder feature cache serves its encoders when it is on) and reads the fusion
head's output.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import torch

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.distributed import all_reduce_sum
from mmfuse.engine.loading import build_loader, move_to_device
from mmfuse.engine.step import is_empty_batch

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["PrototypeRefresh", "embedding_can_change"]


def embedding_can_change(model: Any) -> bool:
    """Whether training moves the fused vectors: some encoder or fusion parameter is trainable."""
    upstream = [*model.encoders.parameters(), *model.fusion.parameters()]
    return any(parameter.requires_grad for parameter in upstream)


@contextlib.contextmanager
def _without_augmentation(dataset: Any) -> Iterator[None]:
    """Prototypes are means of the training rows as they are, not of random augmented views."""
    seed = getattr(dataset, "augmentation_seed", None)
    if seed is not None:
        dataset.augmentation_seed = None
    try:
        yield
    finally:
        if seed is not None:
            dataset.augmentation_seed = seed


class PrototypeRefresh(Callback):
    """Recomputes task ``task``'s prototypes from the training split; see the module docstring."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.refreshes = 0  # passes made in this process (tests and logs read it)

    @property
    def state_key(self) -> str:
        return f"PrototypeRefresh:{self.task}"

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.refresh(trainer)
        rows = trainer.model.tasks[self.task].prototype_rows
        trainer.log(f"tasks.{self.task}: prototypes from {int(rows.sum())} training rows ({int((rows > 0).sum())} classes)")

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        if embedding_can_change(trainer.model) and self._evaluation_follows(trainer):
            self.refresh(trainer)

    @staticmethod
    def _evaluation_follows(trainer: "Trainer") -> bool:
        config = trainer.config
        last_of_epoch = trainer.batch_in_epoch >= trainer.batches_per_epoch
        scheduled = bool(trainer.val_dataset is not None and config.eval_every_steps and trainer.global_step % config.eval_every_steps == 0)
        last_step = bool(config.max_steps and trainer.global_step >= config.max_steps)
        return last_of_epoch or scheduled or last_step

    def refresh(self, trainer: "Trainer") -> None:
        """One pass over the training split; sets the prototypes on every rank (a collective)."""
        model, context = trainer.model, trainer.context
        task = model.tasks[self.task]
        sums = torch.zeros(task.num_classes, task.fused_dim, dtype=torch.float64, device=trainer.device)
        counts = torch.zeros(task.num_classes, dtype=torch.float64, device=trainer.device)
        loader = build_loader(
            trainer.train_dataset, trainer.collate, trainer.data, train=False,
            rank=context.rank, world_size=context.world_size, seed=trainer.seed,
        )
        # the whole model's forward, not encode + fusion: under FSDP the first forward must enter
        # through the root module; the fusion head's output is read by a forward hook
        fused: list[torch.Tensor] = []
        hook = model.fusion.register_forward_hook(lambda module, inputs, output: fused.append(output))
        was_training = model.training
        model.eval()
        try:
            # trainer.evaluating(): under FSDP the parameters are gathered once, since ranks' shares
            # of the rows (and so their batch counts) may differ
            with trainer.evaluating(), _without_augmentation(trainer.train_dataset), torch.no_grad():
                for batch in loader:
                    batch.pop("skipped", None)
                    if is_empty_batch(batch):
                        continue
                    batch = move_to_device(batch, trainer.device)
                    fused.clear()
                    with trainer.autocast():
                        model(batch)
                    batch_sums, batch_counts = task.class_sums(fused[0], batch["targets"][self.task])
                    sums += batch_sums
                    counts += batch_counts
        finally:
            hook.remove()
            model.train(was_training)
        all_reduce_sum(sums, context)
        all_reduce_sum(counts, context)
        task.set_prototypes(sums, counts)
        self.refreshes += 1
