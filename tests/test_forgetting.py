"""Forgetting measures: the probe chooses C on validation data; OTDD sees labels, L2 does not."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from proxyfda.errors import ProxyFDAError
from proxyfda.forgetting import feature_l2, linear_probe, otdd, probe_accuracy, stratified_split


def blobs(n_per_class=60, d=8, separation=4.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=separation, size=(3, d))
    labels = np.repeat(np.arange(3), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), d)), labels


def test_stratified_split_keeps_class_shares():
    labels = np.repeat(np.arange(3), [30, 60, 90])
    first, second = stratified_split(labels, 2 / 3, seed=1)
    assert len(np.intersect1d(first, second)) == 0 and len(first) + len(second) == 180
    assert np.bincount(labels[first]).tolist() == [20, 40, 60]


def test_probe_separable_vs_random_labels():
    x, y = blobs()
    assert probe_accuracy(x, y).accuracy > 0.95
    shuffled = np.random.default_rng(0).permutation(y)
    assert probe_accuracy(x, shuffled).accuracy < 0.6
    result = linear_probe(x[::2], y[::2], x[1::2], y[1::2], Cs=(0.01, 1.0))
    assert set(result.val_accuracy) == {0.01, 1.0} and result.C in (0.01, 1.0)
    with pytest.raises(ProxyFDAError, match="two classes"):
        linear_probe(x, np.zeros(len(x), int), x, y)


def test_otdd_is_zero_for_identical_sets_and_label_aware():
    x, y = blobs(n_per_class=30)
    assert otdd(x, y, x, y) == pytest.approx(0.0, abs=1e-3)  # sqrt of float round-off
    # relabelling a third of the points moves no point, so label-blind OT and L2 see nothing...
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flip = rng.choice(len(y), len(y) // 3, replace=False)
    noisy[flip] = (y[flip] + 1) % 3
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    plain = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(x), 1 / len(x)), ot.dist(unit, unit))
    assert plain == pytest.approx(0.0, abs=1e-9) and feature_l2(x, x) == 0.0
    # ...but the label-aware distance does; renaming classes, which changes nothing real, does not
    assert otdd(x, y, x, noisy) > 0.1
    assert otdd(x, y, x, (y + 1) % 3) == pytest.approx(0.0, abs=1e-3)


def test_otdd_grows_with_a_shift():
    x, y = blobs(n_per_class=30)
    rng = np.random.default_rng(1)
    small = otdd(x, y, x + 0.1 * rng.normal(size=x.shape), y)
    large = otdd(x, y, x + 1.0 * rng.normal(size=x.shape), y)
    assert 0 < small < large
