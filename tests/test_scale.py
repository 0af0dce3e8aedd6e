"""Scale: the approximate kNN backend and its measured recall, memory without N×N matrices, and the pieces
that keep the app usable at 100k points (map samples, paged tables, UMAP's neighbour graph)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.manifold import trustworthiness as sk_trustworthiness

import proxyfda.knn as knn
import proxyfda.metrics as M
from proxyfda.drift import compute_drift
from proxyfda.knn import KnnGraph, knn_graph, measured_recall, resolve_backend, search
from proxyfda.projection import umap_neighbours

pytest.importorskip("faiss")


def _clusters(n: int, d: int, seed: int = 0, classes: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    return (centres[labels] + 0.7 * rng.normal(size=(n, d))).astype(np.float32), labels


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _brute(x: np.ndarray, k: int) -> np.ndarray:
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------- approximate kNN


def test_hnsw_graph_is_a_valid_graph_with_high_measured_recall():
    x, _ = _clusters(3000, 32)
    unit = _unit(x)
    graph = search(unit, 10, "ip", "faiss-hnsw")
    assert graph.indices.shape == (3000, 10)
    assert not (graph.indices == np.arange(3000)[:, None]).any()
    M.knn_overlap(graph.indices, graph.indices)  # check_graph: distinct ids in range
    assert (np.diff(graph.similarities, axis=1) <= 1e-6).all()
    truth = _brute(unit, 10)
    true_recall = float((truth[:, :, None] == graph.indices[:, None, :]).any(2).mean())
    recall = measured_recall(unit, graph, "ip", sample=500)
    assert recall > 0.9 and abs(recall - true_recall) < 0.03


def test_measured_recall_sees_a_damaged_graph_and_is_one_for_exact_search():
    x, _ = _clusters(800, 16, seed=1)
    unit = _unit(x)
    exact = search(unit, 8, "ip", "torch")
    assert measured_recall(unit, exact, "ip") == pytest.approx(1.0)
    damaged = exact.indices.copy()
    damaged[:, 4:] = (damaged[:, 4:] + 1) % 800  # half of each row replaced
    damaged_recall = measured_recall(unit, KnnGraph(damaged, exact.similarities), "ip")
    assert damaged_recall < 0.6


def test_exact_search_of_some_rows_equals_those_rows_of_the_full_graph():
    x, _ = _clusters(500, 12, seed=2)
    for metric in ("ip", "l2"):
        full = knn._torch_knn(x, 6, metric, 64)
        rows = np.array([0, 3, 4, 5, 200, 499])
        part = knn._torch_knn(x, 6, metric, 4, rows=rows)
        np.testing.assert_array_equal(part.indices, full.indices[rows])
        np.testing.assert_allclose(part.similarities, full.similarities[rows], rtol=1e-5, atol=1e-5)


def test_auto_switches_to_hnsw_above_the_exact_limit_and_the_report_announces_it(monkeypatch):
    assert resolve_backend("auto", knn.EXACT_MAX_N) == "torch"
    assert resolve_backend("auto", knn.EXACT_MAX_N + 1) == "faiss-hnsw"
    monkeypatch.setattr(knn, "EXACT_MAX_N", 500)
    monkeypatch.setattr("proxyfda.drift.EXACT_MAX_N", 500)
    x_a, labels = _clusters(900, 24, seed=3)
    x_b = x_a + 0.3 * np.random.default_rng(4).normal(size=x_a.shape).astype(np.float32)
    report = compute_drift(x_a, x_b, labels, [str(c) for c in range(20)], 10)
    m = report.metrics
    assert m["knn_backend"] == "faiss-hnsw"
    assert 0.8 < m["knn_recall_a"] <= 1.0 and 0.8 < m["knn_recall_b"] <= 1.0
    assert "approximate (faiss-hnsw)" in m["knn_note"] and "N = 900 > 500" in m["knn_note"]
    assert f"{m['knn_recall_a']:.3f}" in m["knn_note"] and "'torch' backend for exact" in m["knn_note"]
    exact = compute_drift(x_a, x_b, labels, [str(c) for c in range(20)], 10, backend="torch").metrics
    assert "knn_note" not in exact
    assert abs(m["overlap_at_k_mean"] - exact["overlap_at_k_mean"]) < 0.05


# ---------------------------------------------------------------- no N×N matrix


def test_the_drift_pipeline_never_holds_an_n_by_n_matrix():
    """At N = 12,000 one float32 N×N matrix is 576 MB; numpy's allocations (which tracemalloc sees) stay
    far below it, rank passes and all: about 150 MB, the fixed 64 MB distance block and its companions
    (with the whole matrix in one block they peak at 1.4 GB)."""
    n = 12_000
    x_a, labels = _clusters(n, 24, seed=5)
    x_b = x_a + 0.5 * np.random.default_rng(6).normal(size=x_a.shape).astype(np.float32)
    tracemalloc.start()
    try:
        report = compute_drift(x_a, x_b, labels, [str(c) for c in range(20)], 10, backend="torch")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {"trustworthiness", "continuity", "linear_cka", "cknna", "procrustes_disparity"} <= set(report.metrics)
    assert peak < n * n * 4 / 2, f"numpy peaked at {peak / 1e6:.0f} MB"


def test_float32_ranks_give_sklearns_trustworthiness(monkeypatch):
    x, _ = _clusters(400, 10, seed=7)
    y = x + 0.8 * np.random.default_rng(8).normal(size=x.shape)
    expected = sk_trustworthiness(x, y, n_neighbors=7)
    monkeypatch.setattr(M, "_RANK_FLOAT64_BYTES", 0)  # every space counts as large
    assert M.rank_dtype(400, 10) == np.float32
    assert M.trustworthiness(x.astype(np.float32), y.astype(np.float32), 7) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("share", [0.05, 0.9])  # the compacted path and the k-pass path
def test_count_closer_equals_brute_force(share):
    rng = np.random.default_rng(9)
    dist = rng.random((40, 3000))
    thresholds = np.sort(rng.random((40, 6)) * share, axis=1)
    expected = (dist[:, :, None] < thresholds[:, None, :]).sum(axis=1)
    np.testing.assert_array_equal(M._count_closer(dist, thresholds), expected)


def test_global_geometry_permuted_equals_cka_of_the_permuted_rows():
    x, _ = _clusters(5000, 12, seed=10)  # several Gram blocks
    y = np.tanh(x @ np.random.default_rng(11).normal(size=(12, 9))).astype(np.float32)
    geometry = M.Geometry(*M.paired(x, y))
    permutation = np.random.default_rng(12).permutation(len(x))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert geometry.linear_cka() == pytest.approx(M.linear_cka(x64, y64), rel=1e-5)
    assert geometry.permuted_cka(permutation) == pytest.approx(M.linear_cka(x64, y64[permutation]), rel=1e-5)
    assert geometry.procrustes_disparity() == pytest.approx(M.procrustes_disparity(x64, y64), rel=1e-5)


# ---------------------------------------------------------------- maps and tables at scale


def test_umap_neighbours_are_self_then_the_exact_neighbours_as_distances():
    x, _ = _clusters(300, 8, seed=13)
    indices, distances, _ = umap_neighbours(x, 6, "cosine")
    unit = _unit(x)
    np.testing.assert_array_equal(indices[:, 0], np.arange(300))
    np.testing.assert_array_equal(indices[:, 1:], _brute(unit, 5))
    expected = 1.0 - np.take_along_axis(unit @ unit.T, indices, axis=1)
    np.testing.assert_allclose(distances, np.maximum(expected, 0), atol=1e-5)
    indices, distances, _ = umap_neighbours(x, 6, "euclidean")
    gaps = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    np.testing.assert_allclose(distances, np.take_along_axis(gaps, indices, axis=1), rtol=1e-3, atol=1e-3)


def test_map_sample_keeps_what_must_be_seen_within_its_budget():
    from app.linked_maps import DRIFTED_SHARE, map_sample

    overlap = np.random.default_rng(14).random(50_000)
    keep = [7, 123, 49_999]
    shown = map_sample(overlap, keep, budget=2000)
    assert len(shown) == 2000 and (np.diff(shown) > 0).all()
    assert set(keep) <= set(shown.tolist())
    assert set(np.argsort(overlap)[: int(2000 * DRIFTED_SHARE)].tolist()) <= set(shown.tolist())
    np.testing.assert_array_equal(map_sample(overlap[:1500], keep[:2], budget=2000), np.arange(1500))


def test_selection_highlights_the_right_points_of_a_sampled_map():
    from app.linked_maps import map_figure

    coords = np.random.default_rng(15).normal(size=(100, 2))
    shown = np.array([2, 5, 9, 40, 77])
    fig = map_figure(coords, "A", labels=np.zeros(100, int), class_names=["a"], overlap=np.ones(100),
                     l2=np.zeros(100), selected=[9, 77, 50], shown=shown)
    trace = fig.data[0]
    assert list(trace.customdata) == [2, 5, 9, 40, 77]
    assert list(trace.selectedpoints) == [2, 4]  # ids 9 and 77; id 50 is not drawn
    np.testing.assert_allclose(np.asarray(trace.x), coords[shown, 0])


def test_most_drifted_pages_through_every_point_in_one_order():
    x_a, labels = _clusters(600, 12, seed=16)
    x_b = x_a + 0.6 * np.random.default_rng(17).normal(size=x_a.shape).astype(np.float32)
    report = compute_drift(x_a, x_b, labels, [str(c) for c in range(20)], 8, backend="torch")
    pages = [report.most_drifted(50, start=start) for start in range(0, 600, 50)]
    ids = np.concatenate([page["id"].to_numpy() for page in pages])
    np.testing.assert_array_equal(np.sort(ids), np.arange(600))
    frame = report.points_frame()
    expected = frame.sort_values(["overlap_at_k", "l2_drift", "id"], ascending=[True, False, True])["id"].to_numpy()
    np.testing.assert_array_equal(ids, expected)
    assert knn_graph(x_a, 8).indices.shape == (600, 8)


def test_drift_command_and_html_scores_announce_an_approximate_graph(tmp_path, capsys):
    """`proxyfda drift` on two embedding files prints the note and keeps the recall in metrics.json; the HTML
    report's scores section carries the same note."""
    import json

    from proxyfda.cli import main
    from proxyfda.drift import calibrate
    from proxyfda.report_html import _scores_section

    x_a, labels = _clusters(400, 16, seed=18)
    x_b = x_a + 0.4 * np.random.default_rng(19).normal(size=x_a.shape).astype(np.float32)
    np.save(tmp_path / "a.npy", x_a)
    np.save(tmp_path / "b.npy", x_b)
    out = tmp_path / "out"
    assert main(["drift", "--features-a", str(tmp_path / "a.npy"), "--features-b", str(tmp_path / "b.npy"),
                 "--knn-backend", "faiss-hnsw", "--k", "5", "--out", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    assert "note: The kNN graphs are approximate (faiss-hnsw) because it was chosen: recall@5" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["knn_backend"] == "faiss-hnsw" and 0.8 < metrics["knn_recall_b"] <= 1.0
    report = compute_drift(x_a, x_b, labels, [str(c) for c in range(20)], 5, backend="faiss-hnsw")
    html = _scores_section(report, calibrate(report, x_a, x_b, permutations=2, resamples=20))
    assert "The kNN graphs are approximate (faiss-hnsw)" in html


def test_procrustes_with_fewer_points_than_features_equals_scipy():
    """The N×N route of `Geometry._nuclear` (a run's probe snapshots: a few hundred points, 1280-d)."""
    from scipy.spatial import procrustes

    rng = np.random.default_rng(20)
    x = rng.normal(size=(40, 90))
    y = (x @ rng.normal(size=(90, 90)))[:, :85] + rng.normal(size=(40, 85))
    expected = procrustes(x, np.hstack([y, np.zeros((40, 5))]))[2]
    assert M.procrustes_disparity(x, y) == pytest.approx(expected, abs=1e-10)
    assert M.procrustes_disparity(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(expected, abs=1e-6)
