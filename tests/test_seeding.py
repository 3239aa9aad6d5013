"""Many seeded shuffles at once: each run as numpy's own generator for its seed shuffles it."""

import numpy as np
import pytest

from paragrad.core import seeding
from paragrad.core.seeding import shuffle_seeded


def one_by_one(starts, entropies):
    runs = zip(starts[:-1], np.diff(starts), entropies, strict=True)
    return np.concatenate([start + np.random.default_rng(e).permutation(n) for start, n, e in runs])


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 2**40 + 3, 2**70])
@pytest.mark.parametrize("epoch", [0, 1, 9])
def test_each_run_is_shuffled_as_numpy_shuffles_it_for_its_seed(seed, epoch):
    sizes = np.full(300, 11)
    sizes[:40] += 1
    sizes[-3:] = [0, 1, 2]
    starts = np.r_[0, np.cumsum(sizes)]
    entropies = [[seed, v, epoch, 1] for v in range(300)]
    rows = np.arange(starts[-1])
    shuffle_seeded(rows, starts, entropies)
    np.testing.assert_array_equal(rows, one_by_one(starts, entropies))


@pytest.mark.parametrize(
    "entropies",
    [[[1, 2**33], [1, 5], [3, 2**64 + 1]], [[1, 2, 3], [1, 2], [4]]],
    ids=["numbers-of-other-word-counts", "entropies-of-other-lengths"],
)
def test_entropies_of_other_shapes_are_shuffled_one_by_one_with_the_same_draws(entropies):
    starts = np.array([0, 5, 9, 20])
    assert seeding._entropy_words(entropies) is None
    rows = np.arange(20)
    shuffle_seeded(rows, starts, entropies)
    np.testing.assert_array_equal(rows, one_by_one(starts, entropies))


def test_a_numpy_that_seeds_otherwise_gets_its_own_draws(monkeypatch):
    # This module's hash no longer numpy's: the check on the first seed sends every run
    # to numpy's own generators.
    monkeypatch.setattr(seeding, "INIT_B", seeding.INIT_B ^ 1)
    starts = np.array([0, 50, 100])
    entropies = [[0, 0, 1, 1], [0, 1, 1, 1]]
    rows = np.arange(100)
    shuffle_seeded(rows, starts, entropies)
    np.testing.assert_array_equal(rows, one_by_one(starts, entropies))
