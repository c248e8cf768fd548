"""Training-time augmentation, applied by the training dataset after the deterministic
preprocessing (``Preprocessor.__call__``) through the optional ``Preprocessor.augment`` contract.

Every sample gets its own random generator, seeded from (recipe seed, epoch, sample index,
encoder name) and nothing else: the result does not depend on which worker runs it, on how many
workers there are, or on the global RNG, so a resumed run sees bit-identical augmented samples.
The epoch reaches the workers inside the index itself (:class:`SampleIndex`, yielded by the
engine's sampler), because persistent workers keep the dataset object they started with.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from mmfuse.contracts import Preprocessor

__all__ = ["SampleIndex", "sample_generator", "seeded_global_rng", "augment_inputs", "augments"]


class SampleIndex(int):
    """A dataset index that also carries the epoch it is drawn for (an ``int`` everywhere else)."""

    epoch: int

    def __new__(cls, index: int, epoch: int = 0) -> "SampleIndex":
        value = super().__new__(cls, index)
        value.epoch = int(epoch)
        return value

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader sends indices to workers by pickling
        return (SampleIndex, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"SampleIndex({int(self)}, epoch={self.epoch})"


def sample_generator(seed: int, epoch: int, index: int, encoder: str) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, index, encoder) by a stable hash (not Python's
    ``hash``, which differs between processes)."""
    key = f"{seed}:{epoch}:{index}:{encoder}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator) -> Iterator[None]:
    """Run library code that draws from torch's global RNG (torchvision transforms) from a seed
    taken from ``generator``; the global RNG state is restored afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def augments(preprocessor: Preprocessor) -> bool:
    """True when ``preprocessor`` overrides ``Preprocessor.augment`` and has it switched on."""
    if type(preprocessor).augment is Preprocessor.augment:
        return False
    return bool(getattr(preprocessor, "augmentation_enabled", True))


def augment_inputs(
    inputs: Mapping[str, dict[str, Tensor] | None],
    preprocessors: Mapping[str, Preprocessor],
    index: int,
    seed: int,
) -> dict[str, dict[str, Tensor] | None]:
    """``inputs`` of one sample with each encoder's ``augment`` applied (missing values stay None)."""
    epoch = getattr(index, "epoch", 0)
    augmented = dict(inputs)
    for name, tensors in inputs.items():
        preprocessor = preprocessors[name]
        if tensors is None or not augments(preprocessor):
            continue
        augmented[name] = preprocessor.augment(tensors, sample_generator(seed, epoch, int(index), name))
    return augmented
