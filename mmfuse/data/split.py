"""Seeded, stratified train / val / test split of one manifest's rows. Imports no torch."""

from __future__ import annotations

import random
from typing import Any, Hashable, Sequence

__all__ = ["stratified_split"]


def stratified_split(
    keys: Sequence[Any], val: float, test: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Row indices of (train, val, test).

    Rows are grouped by ``keys`` (the stratification value of each row; pass the same key for
    every row to split without stratifying) and each group is split in the given ratios, so
    each part keeps the class balance of the whole. The same keys and seed always give the same
    split; row order inside each part follows the manifest.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"split ratios must be >= 0 and sum below 1, got val={val}, test={test}")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(_hashable(key), []).append(index)
    rng = random.Random(seed)
    train: list[int] = []
    val_rows: list[int] = []
    test_rows: list[int] = []
    # sorted group order so the split does not depend on the manifest's first-seen order of keys
    for key in sorted(groups, key=repr):
        members = groups[key]
        rng.shuffle(members)
        n_val, n_test = _counts(len(members), val, test)
        val_rows += members[:n_val]
        test_rows += members[n_val : n_val + n_test]
        train += members[n_val + n_test :]
    return sorted(train), sorted(val_rows), sorted(test_rows)


def _counts(size: int, val: float, test: float) -> tuple[int, int]:
    """Rows of one group going to val and test; a group always keeps one training row."""
    n_val = int(round(size * val))
    n_test = int(round(size * test))
    while n_val + n_test > size - 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _hashable(value: Any) -> Hashable:
    return repr(value) if isinstance(value, (list, dict)) else value
