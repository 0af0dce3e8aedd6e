"""Properties the mathematics gives, checked on spaces hypothesis draws.

Each drift score claims invariances (the table in docs/METHOD.md, "What each score is blind to"); the neighbourhood
scores are cosine-based, so they ignore any rotation or positive scaling of either space, and CKA and
Procrustes also ignore a translation. Bounds and identities hold for every input: 0 ≤ order agreement
≤ overlap ≤ 1, Jaccard = overlap / (2 − overlap), identical spaces score the maximum. A report's
summaries are the means of its per-point columns, overall and per class. The permutation null sits at
the analytic baseline k/(N−1).

Spaces are random normal clouds drawn from a hypothesis-chosen seed and shape. A rotated copy changes
the float32 kNN search's round-off, so cases where some point's k-th and (k+1)-th neighbours are closer
than 1e-4 in cosine are set aside (`assume`): a tie has no single right answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from conftest import MUTATION_RUN
from proxyfda import metrics as M
from proxyfda.drift import calibrate, compute_drift
from proxyfda.losses import build_regularizer

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])
#: cosine gap below which a point's k-th and (k+1)-th neighbours count as tied
TIE = 1e-4


@st.composite
def spaces(draw, min_n: int = 12, max_n: int = 60):
    """(x_a, x_b, labels, k): two related random spaces of the same N points, d in 3..10, k in 1..5."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_n, max_n))
    d_a, d_b = draw(st.integers(3, 10)), draw(st.integers(3, 10))
    k = draw(st.integers(1, min(5, (n - 1) // 2)))
    noise = draw(st.floats(0.0, 2.0))
    rng = np.random.default_rng(seed)
    x_a = rng.normal(size=(n, d_a))
    mix = rng.normal(size=(d_a, d_b))
    x_b = x_a @ mix + noise * rng.normal(size=(n, d_b))
    labels = rng.integers(0, 3, n)
    labels[:3] = [0, 1, 2]  # every class present
    return x_a, x_b, labels, k


def clear_neighbours(x: np.ndarray, k: int) -> bool:
    """Whether every point's k nearest others (cosine) are separated from the rest by more than `TIE`."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, : k + 1]
    return bool((top[:, k - 1] - top[:, k] > TIE).all())


def report_of(x_a, x_b, labels, k):
    return compute_drift(x_a, x_b, labels, ["a", "b", "c"], k, backend="torch")


@SETTINGS
@given(spaces())
def test_bounds_and_identities_of_the_per_point_scores(case):
    x_a, x_b, labels, k = case
    report = report_of(x_a, x_b, labels, k)
    assert ((0 <= report.order) & (report.order <= report.overlap + 1e-12) & (report.overlap <= 1)).all()
    np.testing.assert_allclose(report.jaccard, report.overlap / (2 - report.overlap))
    np.testing.assert_array_equal(report.overlap * k, np.round(report.overlap * k))  # counts of shared neighbours
    m = report.metrics
    assert 0 <= m["linear_cka"] <= 1 + 1e-9 and 0 <= m["procrustes_disparity"] <= 1
    assert m["trustworthiness"] <= 1 and m["continuity"] <= 1


@SETTINGS
@given(spaces())
def test_summaries_are_the_means_of_their_own_columns(case):
    x_a, x_b, labels, k = case
    report = report_of(x_a, x_b, labels, k) if x_a.shape[1] == x_b.shape[1] else report_of(x_a, x_a[:, ::-1] + x_b[:, :1],
                                                                                           labels, k)
    m = report.metrics
    for key, column in (("overlap_at_k_mean", report.overlap), ("jaccard_mean", report.jaccard),
                        ("order_agreement_mean", report.order), ("mean_l2_drift", report.l2_drift)):
        assert m[key] == pytest.approx(column.mean(), rel=1e-12, abs=1e-15), key
    assert m["overlap_at_k_random_baseline"] == pytest.approx(k / (len(labels) - 1))
    table = report.class_table.set_index("class")
    for c, name in enumerate("abc"):
        members = labels == c
        assert table.loc[name, "n"] == members.sum()
        assert table.loc[name, "overlap_at_k"] == pytest.approx(report.overlap[members].mean())
    frame = report.points_frame()
    np.testing.assert_array_equal(frame["overlap_at_k"], report.overlap)
    np.testing.assert_array_equal(frame["jaccard"], report.jaccard)
    np.testing.assert_array_equal(frame["order_agreement"], report.order)
    drifted = report.most_drifted(top=len(labels))
    keys = list(zip(drifted["overlap_at_k"], -drifted["l2_drift"]))
    assert keys == sorted(keys)  # lowest overlap first, then largest L2 drift


@SETTINGS
@given(spaces())
def test_identical_spaces_score_the_maximum(case):
    x_a, _, labels, k = case
    m = report_of(x_a, x_a.copy(), labels, k).metrics
    assert (m["overlap_at_k_mean"], m["jaccard_mean"], m["order_agreement_mean"]) == (1.0, 1.0, 1.0)
    assert m["trustworthiness"] == m["continuity"] == 1.0 and m["mean_l2_drift"] == pytest.approx(0.0, abs=1e-7)
    assert m["linear_cka"] == pytest.approx(1.0) and m["procrustes_disparity"] == pytest.approx(0.0, abs=1e-9)
    assert m["cknna"] == pytest.approx(1.0)


@SETTINGS
@given(spaces(), st.floats(0.01, 100.0), st.integers(0, 2**32 - 1))
def test_rotating_and_scaling_either_space_changes_no_score(case, scale, seed):
    x_a, x_b, labels, k = case
    assume(clear_neighbours(x_a, k) and clear_neighbours(x_b, k))
    rotation = ortho_group.rvs(x_b.shape[1], random_state=seed % (2**32 - 1))
    turned = scale * x_b @ rotation
    assume(clear_neighbours(turned, k))
    before, after = report_of(x_a, x_b, labels, k), report_of(x_a, turned, labels, k)
    np.testing.assert_array_equal(after.overlap, before.overlap)
    np.testing.assert_array_equal(after.order, before.order)
    for key in ("trustworthiness", "continuity", "linear_cka", "procrustes_disparity", "cknna"):
        assert after.metrics[key] == pytest.approx(before.metrics[key], rel=1e-6, abs=1e-9), key


@SETTINGS
@given(spaces(), st.integers(0, 2**32 - 1))
def test_cka_and_procrustes_ignore_a_translation_and_are_symmetric(case, seed):
    x_a, x_b, _, _ = case
    shift = np.random.default_rng(seed).normal(scale=10.0, size=x_b.shape[1])
    assert M.linear_cka(x_a, x_b + shift) == pytest.approx(M.linear_cka(x_a, x_b), rel=1e-7)
    assert M.linear_cka(x_b, x_a) == pytest.approx(M.linear_cka(x_a, x_b), rel=1e-9)
    if x_a.shape[1] == x_b.shape[1]:
        assert M.procrustes_disparity(x_a, x_b + shift) == pytest.approx(M.procrustes_disparity(x_a, x_b),
                                                                         rel=1e-6, abs=1e-9)
        assert M.procrustes_disparity(x_b, x_a) == pytest.approx(M.procrustes_disparity(x_a, x_b), rel=1e-6, abs=1e-9)


@SETTINGS
@given(spaces(), st.integers(0, 2**32 - 1))
def test_reordering_the_points_reorders_the_per_point_scores(case, seed):
    x_a, x_b, labels, k = case
    assume(clear_neighbours(x_a, k) and clear_neighbours(x_b, k))
    order = np.random.default_rng(seed).permutation(len(labels))
    before, after = report_of(x_a, x_b, labels, k), report_of(x_a[order], x_b[order], labels[order], k)
    np.testing.assert_array_equal(after.overlap, before.overlap[order])
    np.testing.assert_array_equal(after.order, before.order[order])
    for key in ("overlap_at_k_mean", "trustworthiness", "continuity", "linear_cka", "cknna"):
        assert after.metrics[key] == pytest.approx(before.metrics[key], rel=1e-9), key


@settings(max_examples=1 if MUTATION_RUN else 5)  # 4-15 s an example (the null's arithmetic is also checked by
# test_drift.py's analytic-baseline test, in 3 s; `--hypothesis-profile=explore` searches more)
@given(spaces(min_n=80, max_n=200), st.integers(0, 1000))
def test_the_permutation_null_sits_at_the_random_baseline(case, seed):
    """Its mean over 30 re-pairings within 6 standard errors of k/(N−1) (hypergeometric per point), and
    different re-pairings give different values."""
    x_a, x_b, labels, k = case
    n, permutations = len(labels), 30
    report = report_of(x_a, x_b, labels, k)
    row = calibrate(report, x_a, x_b, permutations=permutations, resamples=20, seed=seed).set_index("score").loc[
        "overlap_at_k_mean"]
    p = k / (n - 1)
    sd = np.sqrt(k * p * (1 - p) * (n - 1 - k) / (n - 2) / n) / k
    assert abs(row["null_mean"] - p) < 6 * sd / np.sqrt(permutations)
    assert row["null_sd"] > 0


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.1, 10.0))
def test_fda_sees_only_cosines_of_the_finetuned_space(seed, scale):
    """Rotating and scaling the fine-tuned features leaves FDA where it was; it is non-negative (softplus pairs)
    and sends no gradient to the pre-trained features. (Proxy-FDA's generator also reads a fixed random
    projection of the features, so only its scale invariance holds.)"""
    generator = torch.Generator().manual_seed(seed)
    x_pre = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    x = (x_pre + 0.7 * torch.randn(16, 6, generator=generator, dtype=torch.float64)).requires_grad_(True)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))[0]
    for name, turn in (("fda", rotation), ("proxy-fda", torch.eye(6, dtype=torch.float64))):
        loss = build_regularizer(name, k=4).double()
        value = loss(x, x_pre.requires_grad_(True), return_terms=True)
        turned = loss(scale * x @ turn, x_pre, return_terms=True)
        assert turned["fda"].item() == pytest.approx(value["fda"].item(), rel=1e-9), name
        assert value["fda"].item() >= 0 and (value["anchor_loss"] >= 0).all()
        value["loss"].backward()
        assert x.grad is not None and x_pre.grad is None
        x.grad = None
