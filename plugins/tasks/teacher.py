"""A trained model folder loaded as a frozen distillation teacher, run on the fly in the
student's training step.

The teacher is held by the distillation task but is NOT one of the student's sub-modules: so it
is not in the student's ``state_dict`` (checkpoints, the saved model folder), not in
``parameters()`` (the optimizer), not wrapped or broadcast by DDP (every rank loads the same
verified folder), and ``student.train()`` never reaches it: its dropout and BatchNorm stay in eval
mode. It moves itself to the device of the inputs it is given, and runs under ``no_grad``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmfuse.contracts import ExtraInput
from mmfuse.predict import load

__all__ = ["FrozenTeacher"]


class FrozenTeacher:
    """``logits(inputs, present)`` of one classifying task of a loaded model folder, with the
    classes put in the student's order; ``inputs`` are what its encoders read, by encoder name."""

    def __init__(self, path: str, task: str, class_order: list[int]) -> None:
        predictor = load(path)  # mmfuse.load: every file of the folder is checked against its digest
        self.model = predictor.module.requires_grad_(False).eval()
        self.task = task
        # the teacher's own columns and preprocessors, as at its own inference
        self.inputs = {
            name: ExtraInput(predictor.columns[name], predictor.preprocessors[name]) for name in predictor.columns
        }
        self.class_order = torch.tensor(class_order, dtype=torch.long)

    def logits(self, inputs: dict[str, Any], present: dict[str, Tensor]) -> Tensor:
        """Teacher logits ``[B, C]`` (float, no gradient) in the student's class order."""
        device = next(iter(present.values())).device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
            self.class_order = self.class_order.to(device)
        with torch.no_grad():
            outputs = self.model({"inputs": inputs, "present": present})[self.task]
        return outputs.float().index_select(-1, self.class_order)

    def __deepcopy__(self, memo: dict[int, Any]) -> "FrozenTeacher":
        # a copy of the student (EMA weights, saving) shares the frozen, read-only teacher
        return self
