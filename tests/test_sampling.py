"""ClassBalancedSampler: batch shape, determinism, hard class mining on a known similarity structure."""

from collections import Counter

import numpy as np
import pytest

from proxyfda.errors import ProxyFDAError
from proxyfda.sampling import ClassBalancedSampler


def labels_for(n_classes, per_class):
    return np.repeat(np.arange(n_classes), per_class)


def test_every_batch_has_m_classes_of_n_images():
    labels = labels_for(40, 10)
    sampler = ClassBalancedSampler(labels, m=16, n=4, seed=0)
    for batch, _ in zip(sampler, range(20)):
        counts = Counter(labels[batch].tolist())
        assert len(batch) == 64 and len(counts) == 16 and set(counts.values()) == {4}


def test_batches_are_deterministic_per_seed():
    labels = labels_for(30, 8)
    first = [ClassBalancedSampler(labels, m=8, n=2, seed=3).next_batch() for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    a, b = ClassBalancedSampler(labels, m=8, n=2, seed=3), ClassBalancedSampler(labels, m=8, n=2, seed=4)
    assert any(not np.array_equal(a.next_batch(), b.next_batch()) for _ in range(5))


def test_hard_mining_puts_similar_classes_together():
    # 32 classes in 4 groups of 8 whose means share a direction: a mined batch of m=8 classes is one group.
    rng = np.random.default_rng(0)
    directions = np.eye(64)[:4] * 10
    means = np.repeat(directions, 8, axis=0) + rng.normal(size=(32, 64))
    groups = np.arange(32) // 8
    sampler = ClassBalancedSampler(labels_for(32, 5), m=8, n=4, class_means=means, hard_fraction=1.0, seed=1)
    for _ in range(10):
        sampler.next_batch()
        assert sampler.records["hard"]
        assert len(set(groups[sampler.records["classes"]])) == 1
    random_batches = ClassBalancedSampler(labels_for(32, 5), m=8, n=4, class_means=means, hard_fraction=0.0, seed=1)
    mixed = [len(set(groups[random_batches.next_batch()[::4] // 5])) for _ in range(10)]
    assert max(mixed) > 1
    # an explicit 0 stays 0 when class means are given (None would mean the documented 0.5)
    assert random_batches.hard_fraction == 0.0
    assert not any(random_batches.next_batch() is not None and random_batches.records["hard"] for _ in range(50))
    assert ClassBalancedSampler(labels_for(32, 5), m=8, n=4, class_means=means).hard_fraction == 0.5


def test_class_means_can_come_from_per_image_features():
    labels = labels_for(6, 4)
    features = np.repeat(np.eye(6)[[0, 0, 1, 1, 2, 2]], 4, axis=0) + 0.01 * np.arange(24)[:, None] % 1
    sampler = ClassBalancedSampler(labels, m=2, n=2, features=features, hard_fraction=1.0, seed=0)
    for _ in range(5):
        sampler.next_batch()
        assert sorted(sampler.records["classes"]) in ([0, 1], [2, 3], [4, 5])


def test_fewer_classes_than_m_fill_the_batch_with_more_images_per_class():
    labels = labels_for(3, 30)
    batch = ClassBalancedSampler(labels, m=16, n=4, seed=0).next_batch()
    assert len(batch) == 64 and sorted(Counter(labels[batch].tolist()).values()) == [21, 21, 22]


def test_images_are_drawn_without_replacement_until_a_class_runs_out():
    labels = labels_for(4, 8)
    sampler = ClassBalancedSampler(labels, m=4, n=4, seed=0)
    seen = np.concatenate([sampler.next_batch(), sampler.next_batch()])
    assert sorted(seen.tolist()) == list(range(32))
    assert sampler.records["with_replacement"] == []


def test_small_classes_are_sampled_with_replacement_and_recorded():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    sampler = ClassBalancedSampler(labels, m=3, n=4, seed=0)
    batch = sampler.next_batch()
    assert Counter(labels[batch].tolist()) == {0: 4, 1: 4, 2: 4}
    assert sampler.records["with_replacement"] == [1]


def test_inputs_are_validated():
    labels = labels_for(4, 4)
    with pytest.raises(ProxyFDAError, match="n must be"):
        ClassBalancedSampler(labels, n=0)
    with pytest.raises(ProxyFDAError, match="class means"):
        ClassBalancedSampler(labels, hard_fraction=0.5)
    with pytest.raises(ProxyFDAError, match="one row per class"):
        ClassBalancedSampler(labels, class_means=np.ones((3, 2)))
    with pytest.raises(ProxyFDAError, match="1-D"):
        ClassBalancedSampler(np.zeros((2, 2)))
