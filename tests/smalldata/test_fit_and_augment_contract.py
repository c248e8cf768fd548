"""The optional Preprocessor.fit / Preprocessor.augment contract: fit sees the training values
once and its overrides land in the recipe; augment runs on the training split only, seeded by
(seed, epoch, index, encoder) so that workers, epochs and resumes see the same numbers."""

from __future__ import annotations

import pickle

import torch
from torch.utils.data import DataLoader

from mmfuse.contracts import Preprocessor
from mmfuse.data.augmentation import SampleIndex, augment_inputs, sample_generator, seeded_global_rng
from mmfuse.data.fitting import evenly_spaced
from mmfuse.engine.loading import ResumableDistributedSampler


class NoisyNumbers(Preprocessor):
    modality = "vector"

    def __call__(self, value):
        return {"x": torch.tensor([float(value)])}

    def collate(self, items):
        return {"x": torch.stack([torch.zeros(1) if i is None else i["x"] for i in items])}

    def augment(self, tensors, generator):
        return {"x": tensors["x"] + torch.rand(1, generator=generator)}


class IndexedDataset(torch.utils.data.Dataset):
    """Returns the augmented value of each index, as ManifestDataset does."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.preprocessors = {"num": NoisyNumbers()}

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        inputs = {"num": self.preprocessors["num"](int(index))}
        return augment_inputs(inputs, self.preprocessors, index, self.seed)["num"]["x"]


def _epoch(loader: DataLoader, epoch: int, start: int = 0) -> dict[int, float]:
    loader.sampler.set_epoch(epoch, start)
    order = list(loader.sampler._order())[start:]
    values = torch.cat([batch.flatten() for batch in loader]).tolist()
    return dict(zip(order, values))


def test_sample_index_keeps_the_epoch_through_pickling():
    index = pickle.loads(pickle.dumps(SampleIndex(5, epoch=3)))
    assert index == 5 and index.epoch == 3 and [10, 11, 12, 13, 14, 15][index] == 15


def test_augmentation_depends_on_seed_epoch_index_and_encoder_only():
    a = torch.rand(4, generator=sample_generator(0, 1, 2, "image"))
    assert torch.equal(a, torch.rand(4, generator=sample_generator(0, 1, 2, "image")))
    for other in [(1, 1, 2, "image"), (0, 2, 2, "image"), (0, 1, 3, "image"), (0, 1, 2, "audio")]:
        assert not torch.equal(a, torch.rand(4, generator=sample_generator(*other)))


def test_seeded_global_rng_restores_the_global_stream():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with seeded_global_rng(sample_generator(0, 0, 0, "x")):
        inside = torch.rand(3)
    with seeded_global_rng(sample_generator(0, 0, 0, "x")):
        assert torch.equal(torch.rand(3), inside)
    assert torch.equal(torch.rand(3), expected)


def test_workers_epochs_and_resume_give_the_same_augmented_samples():
    dataset = IndexedDataset(seed=3)
    sampler = ResumableDistributedSampler(len(dataset), shuffle=True, seed=3)
    single = DataLoader(dataset, batch_size=2, sampler=sampler)
    first, second = _epoch(single, 0), _epoch(single, 1)
    assert first.keys() == second.keys()
    assert all(first[i] != second[i] for i in first), "a new epoch must draw new augmentations"
    assert all(i <= v < i + 1 for i, v in first.items())
    pooled = DataLoader(
        dataset, batch_size=2, sampler=ResumableDistributedSampler(8, shuffle=True, seed=3),
        num_workers=2, persistent_workers=True,
    )
    assert _epoch(pooled, 0) == first and _epoch(pooled, 1) == second
    resumed = _epoch(DataLoader(dataset, batch_size=2, sampler=ResumableDistributedSampler(8, shuffle=True, seed=3)), 1, start=4)
    assert resumed == {i: v for i, v in second.items() if i in resumed} and len(resumed) == 4


def test_evenly_spaced_keeps_order_and_limit():
    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly_spaced([1, 2], 5) == [1, 2]
