"""compute_drift and DriftReport against reference values on data whose answer is known by construction.

The hand-built case: 9 points in 3 tight clusters along the axes of R^3 (k = 2, so each point's
neighbours are the other two members of its cluster). In the fine-tuned space points 2 and 3 trade
clusters, so by construction

    point      pre-trained N(i)   fine-tuned N(i)   overlap   jaccard
    0          {1, 2}             {1, 3}            1/2       1/3
    1          {0, 2}             {0, 3}            1/2       1/3
    2          {0, 1}             {4, 5}            0         0
    3          {4, 5}             {0, 1}            0         0
    4          {3, 5}             {2, 5}            1/2       1/3
    5          {3, 4}             {2, 4}            1/2       1/3
    6, 7, 8    the other two      the same          1         1
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import procrustes
from sklearn.manifold import trustworthiness as sk_trustworthiness

from proxyfda.config import DriftConfig
from proxyfda import metrics as M
from proxyfda.drift import compute_drift
from proxyfda.errors import ProxyFDAError

K = 2
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
CLASS_NAMES = ["a", "b", "c"]

# cluster c sits along axis e_c; small, distinct offsets fix the order inside a cluster
X_A = np.array([
    [1.0, 0.10, 0.02], [1.0, 0.02, 0.12], [1.0, 0.07, 0.07],   # cluster a: 0, 1, 2
    [0.03, 1.0, 0.11], [0.10, 1.0, 0.01], [0.06, 1.0, 0.05],   # cluster b: 3, 4, 5
    [0.02, 0.13, 1.0], [0.12, 0.03, 1.0], [0.08, 0.08, 1.0],   # cluster c: 6, 7, 8
])
X_B = X_A.copy()
X_B[2] = [0.05, 1.0, 0.09]    # point 2 moves to cluster b
X_B[3] = [1.0, 0.04, 0.09]    # point 3 moves to cluster a
X_B[0] = [1.0, 0.11, 0.02]    # small moves inside the clusters: distinct L2 drifts
X_B[5] = [0.06, 1.0, 0.08]
X_B[4] = [0.10, 1.0, 0.03]
X_B[1] = [1.0, 0.02, 0.125]

PRE = {0: {1, 2}, 1: {0, 2}, 2: {0, 1}, 3: {4, 5}, 4: {3, 5}, 5: {3, 4}, 6: {7, 8}, 7: {6, 8}, 8: {6, 7}}
FT = {**PRE, 0: {1, 3}, 1: {0, 3}, 2: {4, 5}, 3: {0, 1}, 4: {2, 5}, 5: {2, 4}}
OVERLAP = np.array([0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0])
JACCARD = np.array([1 / 3, 1 / 3, 0.0, 0.0, 1 / 3, 1 / 3, 1.0, 1.0, 1.0])


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


L2 = np.linalg.norm(_unit(X_A) - _unit(X_B), axis=1)  # the documented definition, point by point


@pytest.fixture(scope="module")
def report():
    return compute_drift(X_A, X_B, LABELS, CLASS_NAMES, K, backend="torch",
                         config=DriftConfig(pretrained="pre", finetuned="ft", data="hand", n=9, k=K))


def test_the_hand_case_is_what_the_docstring_says():
    """Guards the fixture itself: brute-force cosine kNN reproduces the tables above."""
    for x, expected in ((X_A, PRE), (X_B, FT)):
        sims = _unit(x) @ _unit(x).T
        np.fill_diagonal(sims, -np.inf)
        for i in range(9):
            assert set(np.argsort(-sims[i])[:K].tolist()) == expected[i]
    # drift sizes: 2 and 3 jump clusters, 6-8 do not move, 5 > 4 > 0 > 1 move a little
    assert L2[6:].max() == 0.0
    assert L2[3] > L2[2] > 0.5 > L2[5] > L2[4] > L2[0] > L2[1] > 0.0


def test_graphs_follow_the_construction(report):
    assert [set(row.tolist()) for row in report.graph_a.indices] == [PRE[i] for i in range(9)]
    assert [set(row.tolist()) for row in report.graph_b.indices] == [FT[i] for i in range(9)]


def test_per_point_overlap_jaccard_and_l2(report):
    np.testing.assert_allclose(report.overlap, OVERLAP)
    np.testing.assert_allclose(report.jaccard, JACCARD)
    np.testing.assert_allclose(report.l2_drift, L2, atol=1e-12)


def test_global_metrics_on_the_hand_case(report):
    m = report.metrics
    assert (m["n"], m["k"], m["knn_backend"]) == (9, 2, "torch")
    assert m["overlap_at_k_mean"] == pytest.approx(5 / 9)
    assert m["jaccard_mean"] == pytest.approx(13 / 27)
    assert m["overlap_at_k_random_baseline"] == pytest.approx(2 / 8)
    assert m["mean_l2_drift"] == pytest.approx(L2.mean())
    # independent implementations: sklearn (cosine; x_other's neighbours found on unit rows), scipy, Gram-form CKA
    assert m["trustworthiness"] == pytest.approx(sk_trustworthiness(X_A, _unit(X_B), n_neighbors=K, metric="cosine"))
    assert m["continuity"] == pytest.approx(sk_trustworthiness(X_B, _unit(X_A), n_neighbors=K, metric="cosine"))
    assert m["trustworthiness"] < 1.0 and m["continuity"] < 1.0
    assert m["procrustes_disparity"] == pytest.approx(procrustes(X_A, X_B)[2], abs=1e-10)
    h = np.eye(9) - 1 / 9
    ka, kb = h @ X_A @ X_A.T @ h, h @ X_B @ X_B.T @ h
    assert m["linear_cka"] == pytest.approx((ka * kb).sum() / np.sqrt((ka * ka).sum() * (kb * kb).sum()))


def test_identical_spaces_preserve_everything():
    """Same features twice: overlap = jaccard = 1, no L2 drift, CKA 1, Procrustes 0, T = C = 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    labels = np.arange(40) % 4
    r = compute_drift(x, x.copy(), labels, list("wxyz"), 5, backend="torch")
    np.testing.assert_array_equal(r.overlap, np.ones(40))
    np.testing.assert_array_equal(r.jaccard, np.ones(40))
    np.testing.assert_allclose(r.l2_drift, np.zeros(40), atol=1e-12)
    np.testing.assert_array_equal(r.graph_a.indices, r.graph_b.indices)
    m = r.metrics
    assert m["overlap_at_k_mean"] == 1.0 and m["jaccard_mean"] == 1.0 and m["mean_l2_drift"] == pytest.approx(0.0)
    assert m["linear_cka"] == pytest.approx(1.0) and m["procrustes_disparity"] == pytest.approx(0.0, abs=1e-10)
    assert m["trustworthiness"] == pytest.approx(1.0) and m["continuity"] == pytest.approx(1.0)
    np.testing.assert_array_equal(r.order, np.ones(40))
    assert m["order_agreement_mean"] == 1.0 and m["cknna"] == pytest.approx(1.0)
    assert m["overlap_at_k_random_baseline"] == pytest.approx(5 / 39)
    assert (r.class_table["overlap_at_k"] == 1.0).all() and (r.class_table["composition_tv"] == 0.0).all()
    assert r.neighbours(3)["lost"].size == 0 and r.neighbours(3)["gained"].size == 0


def test_trustworthiness_is_left_out_when_k_is_not_below_half_n():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3))
    m = compute_drift(x, x + 0.1, np.zeros(8, dtype=int), ["only"], 4, backend="torch").metrics
    assert "trustworthiness" not in m and "continuity" not in m


def test_most_drifted_order(report):
    """Lowest overlap first, ties broken by the larger L2 drift: 3, 2 (jumped), 5, 4, 0, 1 (half kept),
    then the unmoved cluster."""
    table = report.most_drifted(9)
    assert table["id"].tolist()[:6] == [3, 2, 5, 4, 0, 1]
    assert set(table["id"].tolist()[6:]) == {6, 7, 8}
    assert report.most_drifted(2)["id"].tolist() == [3, 2]
    assert "neighbours_pretrained" not in table.columns
    row = table.set_index("id").loc[3]
    assert row["class"] == "b" and row["label"] == 1 and row["overlap_at_k"] == 0.0
    assert row["l2_drift"] == pytest.approx(L2[3])


@pytest.mark.parametrize("i, kept, lost, gained", [
    (0, {1}, {2}, {3}), (1, {0}, {2}, {3}), (2, set(), {0, 1}, {4, 5}), (3, set(), {4, 5}, {0, 1}),
    (4, {5}, {3}, {2}), (5, {4}, {3}, {2}), (7, {6, 8}, set(), set()),
])
def test_neighbours_split_into_kept_lost_gained(report, i, kept, lost, gained):
    split = report.neighbours(i)
    assert {name: set(v.tolist()) for name, v in split.items()} == {"kept": kept, "lost": lost, "gained": gained}
    # kept in the pre-trained order
    assert split["kept"].tolist() == [j for j in report.graph_a.indices[i].tolist() if j in kept]


EXPECTED_CLASSES = pd.DataFrame({
    "class": ["a", "b", "c"],
    "n": [3, 3, 3],
    "overlap_at_k": [1 / 3, 1 / 3, 1.0],
    "same_class_a": [1.0, 1.0, 1.0],
    # class a's fine-tuned neighbours: 0->{1,3}, 1->{0,3}, 2->{4,5}: 2 of 6 in class a, 4 in class b
    "same_class_b": [1 / 3, 1 / 3, 1.0],
    "composition_tv": [2 / 3, 2 / 3, 0.0],
})


def test_class_table_values(report):
    pd.testing.assert_frame_equal(report.class_table, EXPECTED_CLASSES, check_dtype=False)


def test_points_frame_rows(report):
    frame = report.points_frame()
    assert frame["id"].tolist() == list(range(9))
    assert frame["label"].tolist() == LABELS.tolist()
    assert frame["class"].tolist() == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    np.testing.assert_allclose(frame["overlap_at_k"], OVERLAP)
    np.testing.assert_allclose(frame["jaccard"], JACCARD)
    np.testing.assert_allclose(frame["l2_drift"], L2, atol=1e-12)
    assert [set(r) for r in frame["neighbours_pretrained"]] == [PRE[i] for i in range(9)]
    assert [set(r) for r in frame["neighbours_finetuned"]] == [FT[i] for i in range(9)]


def test_save_writes_the_report_values(report, tmp_path):
    out = report.save(tmp_path / "new" / "drift")  # its folder is made, with any missing parent
    assert out == tmp_path / "new" / "drift"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == report.metrics
    assert metrics["overlap_at_k_mean"] == pytest.approx(5 / 9) and metrics["jaccard_mean"] == pytest.approx(13 / 27)

    points = pd.read_parquet(out / "points.parquet")
    assert points["id"].tolist() == list(range(9))
    assert points["class"].tolist() == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    np.testing.assert_allclose(points["overlap_at_k"], OVERLAP)
    np.testing.assert_allclose(points["jaccard"], JACCARD)
    np.testing.assert_allclose(points["l2_drift"], L2, atol=1e-12)
    for column, graph in (("neighbours_pretrained", report.graph_a), ("neighbours_finetuned", report.graph_b)):
        assert [list(r) for r in points[column]] == graph.indices.tolist()

    pd.testing.assert_frame_equal(pd.read_csv(out / "classes.csv"), EXPECTED_CLASSES, check_dtype=False)
    config = json.loads((out / "config.json").read_text())
    assert config == {**DriftConfig().to_dict(), "pretrained": "pre", "finetuned": "ft", "data": "hand", "n": 9, "k": 2}


def test_save_without_config_writes_no_config_file(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 4))
    out = compute_drift(x, x, np.zeros(10, dtype=int), ["only"], 2, backend="torch").save(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["classes.csv", "metrics.json", "points.parquet"]


def test_different_feature_widths_give_a_report_or_a_clear_error():
    rng = np.random.default_rng(3)
    x_a, x_b = rng.normal(size=(20, 5)), rng.normal(size=(20, 7))
    try:
        report = compute_drift(x_a, x_b, np.zeros(20, dtype=int), ["only"], 3, backend="torch")
    except ProxyFDAError as exc:
        assert "width" in str(exc)
    else:
        assert report.metrics["linear_cka"] == pytest.approx(M.linear_cka(x_a, x_b))


def test_report_carries_cknna_and_order_agreement_from_its_own_graphs():
    """The report's CKNNA and order agreement are the metrics' own, computed on the report's graphs."""
    from test_metrics import _dense_cknna

    rng = np.random.default_rng(4)
    x_a = rng.normal(size=(70, 9))
    x_b = x_a + 0.9 * rng.normal(size=(70, 9))
    r = compute_drift(x_a, x_b, np.arange(70) % 5, list("abcde"), 6, backend="torch")
    assert r.metrics["cknna"] == pytest.approx(_dense_cknna(x_a, x_b, 6), rel=1e-5)
    np.testing.assert_array_equal(r.order, M.order_agreement(r.graph_a.indices, r.graph_b.indices))
    assert r.metrics["order_agreement_mean"] == pytest.approx(r.order.mean())
    assert list(r.points_frame()["order_agreement"]) == list(r.order)


def test_permutation_null_equals_recomputing_on_permuted_rows():
    """Relabelling B's graph gives exactly what a fresh report on the re-paired rows gives."""
    from proxyfda.drift import CALIBRATED, permuted_scores

    rng = np.random.default_rng(11)
    x_a = rng.normal(size=(60, 8))
    x_b = x_a + 0.5 * rng.normal(size=(60, 8))
    labels = np.arange(60) % 3
    report = compute_drift(x_a, x_b, labels, list("abc"), 5, backend="torch")
    for _ in range(3):
        perm = rng.permutation(60)
        fresh = compute_drift(x_a, x_b[perm], labels, list("abc"), 5, backend="torch").metrics
        got = permuted_scores(report, x_a, x_b, perm)
        for name in CALIBRATED:
            assert got[name] == pytest.approx(fresh[name], rel=1e-6, abs=1e-9), name


def test_calibration_separates_a_real_change_from_noise():
    from proxyfda.drift import bootstrap_interval, calibrate

    rng = np.random.default_rng(12)
    x_a = rng.normal(size=(120, 10))
    x_b = x_a + 0.6 * rng.normal(size=(120, 10))
    report = compute_drift(x_a, x_b, np.arange(120) % 4, list("abcd"), 6, backend="torch")
    table = calibrate(report, x_a, x_b, permutations=8, resamples=300, seed=3).set_index("score")
    overlap = table.loc["overlap_at_k_mean"]
    assert overlap["value"] > overlap["null_mean"] + 5 * overlap["null_sd"]  # structure really kept
    assert overlap["null_mean"] == pytest.approx(6 / 119, abs=0.03)  # the null sits at the random baseline
    assert overlap["ci_low"] <= overlap["value"] <= overlap["ci_high"]
    assert np.isnan(table.loc["cknna", "ci_low"])  # no bootstrap for kNN-restricted scores
    # the interval is the percentile bootstrap of the per-point mean
    values = rng.random(50)
    means = values[np.random.default_rng(7).integers(0, 50, size=(400, 50))].mean(axis=1)
    assert bootstrap_interval(values, 400, seed=7) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))


def test_the_permutation_null_is_many_random_pairings_at_the_analytic_baseline():
    """Under a uniformly random re-pairing, point i's relabelled fine-tuned neighbours are a uniform k-subset of
    the other N−1 points, so its shared count is hypergeometric: mean k²/(N−1), variance
    k·p·(1−p)·(N−1−k)/(N−2) with p = k/(N−1). The null's mean must sit at k/(N−1) within its own standard
    error, and its spread across re-pairings must be that of a mean over N such points: a null whose draws
    were one permutation repeated has no spread, one that never re-paired sits at the real score."""
    from proxyfda.drift import calibrate

    rng = np.random.default_rng(5)
    n, k, permutations = 400, 5, 40
    x_a = rng.normal(size=(n, 12))
    x_b = x_a + 0.8 * rng.normal(size=(n, 12))
    report = compute_drift(x_a, x_b, np.arange(n) % 4, list("abcd"), k, backend="torch")
    row = calibrate(report, x_a, x_b, permutations=permutations, resamples=50, seed=2).set_index("score").loc[
        "overlap_at_k_mean"]
    p = k / (n - 1)
    sd = np.sqrt(k * p * (1 - p) * (n - 1 - k) / (n - 2) / n) / k  # of one re-pairing's mean overlap
    assert abs(row["null_mean"] - p) < 4 * sd / np.sqrt(permutations)
    assert 0.6 * sd < row["null_sd"] < 1.8 * sd  # 0.9 to 1.4 sd over twelve seeds: points are not quite independent
    assert row["value"] > row["null_mean"] + 10 * sd


def test_each_calibrated_score_is_its_own_per_point_column():
    """The value is the report's score and the interval the percentile bootstrap (by hand here) of that score's
    own per-point values: overlap's interval from overlaps, Jaccard's from Jaccards, and so on."""
    from proxyfda.drift import calibrate

    report = compute_drift(X_A, X_B, LABELS, CLASS_NAMES, K, backend="torch")
    table = calibrate(report, X_A, X_B, permutations=3, resamples=200, seed=4).set_index("score")
    by_hand = {"overlap_at_k_mean": OVERLAP, "jaccard_mean": JACCARD, "mean_l2_drift": L2,
               "order_agreement_mean": OVERLAP}  # two neighbours: every kept pair keeps its order here
    draws = np.random.default_rng(4).integers(0, 9, size=(200, 9))
    for name, values in by_hand.items():
        assert table.loc[name, "value"] == pytest.approx(values.mean()), name
        low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
        assert (table.loc[name, "ci_low"], table.loc[name, "ci_high"]) == pytest.approx((low, high)), name
    for name in ("linear_cka", "cknna"):
        assert table.loc[name, "value"] == report.metrics[name] and np.isnan(table.loc[name, "ci_low"])


def test_three_way_splits_each_points_pretrained_neighbours_by_who_kept_them():
    from proxyfda.drift import compute_drift, three_way

    rng = np.random.default_rng(3)
    x_a = rng.normal(size=(80, 12))
    x_b = x_a + 0.3 * rng.normal(size=x_a.shape)
    x_c = x_a + 1.5 * rng.normal(size=x_a.shape)
    labels = np.repeat(np.arange(4), 20)
    names = ["a", "b", "c", "d"]
    both = three_way(compute_drift(x_a, x_b, labels, names, 6), compute_drift(x_a, x_c, labels, names, 6), "kept", "lost")
    frame, kept_counts = both.frame().set_index("id"), []
    for i in range(80):  # brute force: sets of cosine neighbours
        def knn(x):
            u = x / np.linalg.norm(x, axis=1, keepdims=True)
            sims = u @ u[i]
            sims[i] = -np.inf
            return set(np.argsort(-sims)[:6])
        pre, in_b, in_c = knn(x_a), knn(x_b), knn(x_c)
        split = both.split(i)
        assert set(split["both"]) == pre & in_b & in_c and set(split["neither"]) == pre - in_b - in_c
        assert set(split["kept only"]) == (pre & in_b) - in_c and set(split["lost only"]) == (pre & in_c) - in_b
        assert frame.loc[i, "kept by kept only"] == len((pre & in_b) - in_c)
        assert frame.loc[i, "kept by lost only"] == len((pre & in_c) - in_b)
        assert frame.loc[i, "class"] == names[labels[i]]
        assert frame.loc[i, "difference"] == pytest.approx((len(pre & in_b) - len(pre & in_c)) / 6)
        kept_counts.append((len(pre & in_b), len(pre & in_c)))
    table = both.frame()
    assert list(table.columns) == ["id", "class", "overlap kept", "overlap lost", "difference", "kept by kept only",
                                   "kept by lost only"]
    magnitude = np.abs(table["difference"].to_numpy())
    assert table.index.tolist() == list(range(80)) and np.all(np.diff(magnitude) <= 0)  # largest differences first
    assert all(np.all(np.diff(table["id"].to_numpy()[magnitude == m]) > 0) for m in set(magnitude))  # ties by id
    b, c = np.array(kept_counts).T
    assert both.summary() == pytest.approx({"overlap kept": b.mean() / 6, "overlap lost": c.mean() / 6,
                                            "kept keeps more": np.mean(b > c), "lost keeps more": np.mean(b < c),
                                            "tie": np.mean(b == c)})
    with pytest.raises(ProxyFDAError, match="same images"):
        three_way(both.b, compute_drift(x_b, x_c, labels, names, 6))
    for other in (compute_drift(x_a, x_c, labels, names, 5), compute_drift(x_a[:79], x_c[:79], labels[:79], names, 6)):
        with pytest.raises(ProxyFDAError, match="same images, with the same k"):  # k alone, or the images alone
            three_way(both.b, other)
    unnamed = three_way(both.b, both.c)
    assert (unnamed.name_b, unnamed.name_c) == ("B", "C")
    same = three_way(both.b, both.c, "run", "run")  # two runs of one name are told apart
    assert (same.name_b, same.name_c) == ("run (1)", "run (2)")


def steady(calls: list[tuple[str, float]], first: float = 0.0) -> None:
    """A progress stream a bar can show: messages, fractions in [0, 1] that never go back, from ``first`` to 1."""
    fractions = [fraction for _, fraction in calls]
    assert all(isinstance(message, str) and message for message, _ in calls)
    assert fractions[0] == first and fractions[-1] == 1.0 and fractions == sorted(fractions), fractions
    assert calls[-1][0] == "Done"


def test_the_drift_route_reports_steady_progress(tmp_path):
    from proxyfda.drift import run_drift

    rng = np.random.default_rng(10)
    np.save(tmp_path / "a.npy", rng.normal(size=(50, 4)))
    np.save(tmp_path / "b.npy", rng.normal(size=(50, 4)))
    calls = []
    compute_drift(X_A, X_B, LABELS, CLASS_NAMES, K, progress=lambda message, fraction: calls.append((message, fraction)))
    steady(calls, first=0.02)
    calls.clear()
    run_drift(DriftConfig(pretrained=f"vectors:{tmp_path / 'a.npy'}", finetuned=f"vectors:{tmp_path / 'b.npy'}",
                          data="rows:50", n=0, k=3), lambda message, fraction: calls.append((message, fraction)))
    steady(calls)
    assert [message for message, _ in calls[:1]] == ["Loading rows:50"]


def test_a_three_way_route_carries_its_config_and_backend_into_both_reports(tmp_path):
    """run_three_way on three embedding files (no encoder): each report is compute_drift of its own pair, made
    with the config's k and kNN backend and carrying the config; the progress runs from 0 to 1 without going back."""
    from proxyfda.drift import run_three_way

    rng = np.random.default_rng(8)
    x_a = rng.normal(size=(90, 6)).astype(np.float32)
    x_b = (x_a + 0.4 * rng.normal(size=x_a.shape)).astype(np.float32)
    x_c = (x_a + 1.2 * rng.normal(size=x_a.shape)).astype(np.float32)
    for name, x in (("a", x_a), ("b", x_b), ("c", x_c)):
        np.save(tmp_path / f"{name}.npy", x)
    config = DriftConfig(pretrained=f"vectors:{tmp_path / 'a.npy'}", finetuned=f"vectors:{tmp_path / 'b.npy'}",
                         compare=f"vectors:{tmp_path / 'c.npy'}", data="rows:90", n=0, k=4, knn_backend="faiss")
    calls = []
    images, both = run_three_way(config, progress=lambda message, fraction: calls.append((message, fraction)))
    steady(calls)
    reading = "Reading the {} embeddings from " + str(tmp_path) + "/{}.npy: 90/90"
    assert calls == [("Loading rows:90", 0.0), (reading.format("pre-trained", "a"), pytest.approx(0.05 + 0.55 / 2)),
                     (reading.format("fine-tuned", "b"), pytest.approx(0.6)),
                     (reading.format("second fine-tuned", "c"), pytest.approx(0.85)),
                     ("Building kNN graphs and metrics", 0.85), ("Done", 1.0)]
    assert (both.name_b, both.name_c) == ("b.npy", "c.npy")
    for report, x in ((both.b, x_b), (both.c, x_c)):
        expected = compute_drift(x_a, x, images.labels, images.class_names, 4, backend="faiss")
        assert report.config == config and report.metrics == expected.metrics
        np.testing.assert_array_equal(report.overlap, expected.overlap)


def test_the_three_way_route_maps_each_encoders_progress_into_its_own_stretch(monkeypatch):
    """An encoder embedding in batches reports 0 → 1; the route shows the first two encoders over 0.05–0.6 and
    the second fine-tune over 0.6–0.85 (a file reports once, at 1, which cannot tell a stretch's start)."""
    from proxyfda import drift

    def reporting(name):
        def features(config, images, progress):
            for fraction in (0.0, 0.5, 1.0):
                progress(f"{name} {fraction}", fraction)
            return (X_A, X_B) if name == "pair" else X_B
        return features

    monkeypatch.setattr(drift, "drift_features", reporting("pair"))
    monkeypatch.setattr(drift, "compare_features", reporting("second"))
    calls = []
    drift.run_three_way(DriftConfig(data="rows:9", n=0, k=K), progress=lambda m, f: calls.append((m, f)))
    assert calls[1:7] == [("pair 0.0", pytest.approx(0.05)), ("pair 0.5", pytest.approx(0.325)),
                          ("pair 1.0", pytest.approx(0.6)), ("second 0.0", pytest.approx(0.6)),
                          ("second 0.5", pytest.approx(0.725)), ("second 1.0", pytest.approx(0.85))]


def test_embedding_progress_says_who_embeds_or_which_file_is_read_and_how_far():
    from proxyfda.drift import _embedding_progress

    calls = []
    report = _embedding_progress(lambda m, f: calls.append((m, f)), "fine-tuned", "efficientnet-lite0", 0.05, 0.5)
    report(128, 512)
    report(512, 512)
    reading = _embedding_progress(lambda m, f: calls.append((m, f)), "pre-trained", "vectors:/x/a.npy#emb", 0.2, 0.4)
    reading(10, 10)
    assert calls == [("Embedding 512 images with the fine-tuned encoder: 128/512", pytest.approx(0.05 + 0.5 / 4)),
                     ("Embedding 512 images with the fine-tuned encoder: 512/512", pytest.approx(0.55)),
                     ("Reading the pre-trained embeddings from /x/a.npy#emb: 10/10", pytest.approx(0.6))]
    _embedding_progress(None, "fine-tuned", "efficientnet-lite0", 0.0, 1.0)(1, 2)  # no one listening: no error


def test_the_default_factory_builds_at_the_size_asked_on_the_default_device(monkeypatch):
    from proxyfda import device, drift, encoders

    monkeypatch.setattr(device, "default_device", lambda: "meta")
    monkeypatch.setattr(encoders, "create_encoder", lambda spec, **options: (spec, options))
    assert drift._default_encoder("run:/x", 48) == ("run:/x", {"image_size": 48, "device": "meta"})


def test_the_second_fine_tune_is_built_by_the_factory_given_at_the_size_asked():
    from proxyfda.data import load_images
    from proxyfda.drift import compare_features

    class Built(Exception):
        pass

    def factory(spec, image_size):
        raise Built(spec, image_size)

    config = DriftConfig(compare="open_clip:RN50", image_size=48)  # a random initialisation: never cached
    with pytest.raises(Built) as built:
        compare_features(config, load_images("digits:test", n=4), make_encoder=factory)
    assert built.value.args == ("open_clip:RN50", 48)


def test_a_three_way_table_saves_as_it_reads(tmp_path):
    from proxyfda.drift import three_way

    rng = np.random.default_rng(9)
    x_a = rng.normal(size=(40, 5))
    reports = [compute_drift(x_a, x_a + s * rng.normal(size=x_a.shape), np.arange(40) % 2, ["p", "q"], 3)
               for s in (0.3, 1.0)]
    both = three_way(*reports, "near", "far")
    out = both.save(tmp_path / "new" / "folder")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "three_way.parquet"), both.frame())
    assert json.loads((out / "three_way.json").read_text()) == both.summary()


def test_an_approximate_graph_is_announced_with_each_spaces_recall_and_interval():
    """The note's figures by hand: the mean of each graph's sampled recalls, ± 1.96 sd/√n (no interval from one
    point), and why the graphs are approximate (past EXACT_MAX_N points, or chosen)."""
    from proxyfda.drift import _recall_note
    from proxyfda.knn import EXACT_MAX_N

    a, b = np.array([1.0, 0.8, 0.9, 0.7]), np.array([0.6, 0.6, 1.0, 0.8])
    found = _recall_note([a, b], EXACT_MAX_N + 1, 10, "faiss-hnsw")
    assert (found["knn_recall_a"], found["knn_recall_b"]) == (pytest.approx(0.85), pytest.approx(0.75))
    margin_a, margin_b = (1.96 * r.std(ddof=1) / 2 for r in (a, b))
    assert f"recall@10 against exact search is 0.850 ± {margin_a:.3f} (pre-trained) and 0.750 ± {margin_b:.3f} " \
           f"(fine-tuned), measured on 4 random points" in found["knn_note"]
    assert f"because N = {EXACT_MAX_N + 1:,} > {EXACT_MAX_N:,}" in found["knn_note"]
    at_limit = _recall_note([a[:1], b[:1]], EXACT_MAX_N, 10, "faiss-hnsw")["knn_note"]
    assert "because it was chosen" in at_limit and "1.000 ± 0.000 (pre-trained) and 0.600 ± 0.000" in at_limit
    two = _recall_note([a[:2], b[:2]], EXACT_MAX_N, 10, "faiss-hnsw")["knn_note"]  # 1.96 · (0.2/√2)/√2 = 0.196; no spread
    assert "0.900 ± 0.196 (pre-trained) and 0.600 ± 0.000 (fine-tuned), measured on 2 random points" in two
