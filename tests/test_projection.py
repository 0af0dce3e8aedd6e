"""Aligned UMAP maps: Procrustes alignment recovers known transforms; maps are cached by content."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from proxyfda import projection
from proxyfda.errors import ProxyFDAError
from proxyfda.projection import project_sequence, cached_pair, procrustes_align, project_pair


def test_procrustes_align_undoes_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 2))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.0 * target @ rotation + np.array([5.0, -2.0])
    np.testing.assert_allclose(procrustes_align(moved, target), target, atol=1e-10)


def test_project_pair_unrolls_a_curve_and_aligns_a_barely_changed_space(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 3 * np.pi, 300))  # a spiral in 16-D: a connected 1-D manifold
    curve = np.stack([t * np.cos(t), t * np.sin(t)] + [np.zeros_like(t)] * 14, axis=1)
    x_a = (curve + 0.3 * rng.normal(size=curve.shape)).astype(np.float32)
    x_b = (x_a + 0.05 * rng.normal(size=x_a.shape)).astype(np.float32)
    assert cached_pair(x_a, x_b, metric="euclidean") is None
    map_a, map_b = project_pair(x_a, x_b, metric="euclidean")
    assert map_a.shape == map_b.shape == (300, 2)
    # the map keeps the order along the curve, and the barely changed space lands where the first did
    assert spearmanr(np.linalg.norm(map_a - map_a[0], axis=1), t).correlation > 0.8
    extent = np.linalg.norm(map_a.max(0) - map_a.min(0))
    assert np.median(np.linalg.norm(map_a - map_b, axis=1)) < 0.15 * extent

    def no_fit(**kwargs):
        raise AssertionError("a cached projection must not fit UMAP again")

    monkeypatch.setattr(projection, "_umap", no_fit)
    again = project_pair(x_a, x_b, metric="euclidean")
    np.testing.assert_array_equal(again[0], map_a)
    np.testing.assert_array_equal(cached_pair(x_a, x_b, metric="euclidean")[1], map_b)


def test_eight_points_get_a_pair_of_maps(tmp_path, monkeypatch):
    """Fewer points than UMAP's 15 neighbours (a small app request): real maps, with 7 neighbours. Placed
    after the first real fit, so numba is compiled already."""
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    x_a = np.random.default_rng(2).normal(size=(8, 6)).astype(np.float32)
    map_a, map_b = project_pair(x_a, x_a + 0.01)
    assert map_a.shape == map_b.shape == (8, 2) and np.isfinite(map_a).all() and np.isfinite(map_b).all()
    assert cached_pair(x_a, x_a + 0.01) is not None


class _RecordingUMAP:
    """Stands in for umap.UMAP: records its options, returns a fixed random layout."""

    calls: list[dict] = []

    def __init__(self, **options):
        self.calls.append(options)

    def fit_transform(self, x):
        return np.random.default_rng(len(self.calls)).normal(size=(len(x), 2))


@pytest.mark.parametrize("n, expected", [(4, 3), (8, 7), (16, 15), (40, 15)])
def test_small_image_sets_lower_the_neighbour_count_instead_of_failing(n, expected, monkeypatch):
    import inspect

    import umap

    monkeypatch.setattr(_RecordingUMAP, "calls", [])
    monkeypatch.setattr(projection, "_umap", _RecordingUMAP)
    monkeypatch.setattr(projection, "is_warm", lambda: True)
    x = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    for method in ("init", "independent"):
        maps = project_pair(x, x, method=method, use_cache=False)
        assert maps[0].shape == (n, 2)
    assert project_sequence([x, x, x], use_cache=False).shape == (3, n, 2)
    assert [call["n_neighbors"] for call in _RecordingUMAP.calls] == [expected] * 7

    class RecordingAligned:  # the options must be ones the real AlignedUMAP accepts
        def __init__(self, **options):
            inspect.signature(umap.AlignedUMAP).bind(**options)
            assert options["n_neighbors"] == expected

        def fit(self, xs, relations):
            self.embeddings_ = [np.zeros((len(x), 2)) + i for i, x in enumerate(xs)]
            return self

    monkeypatch.setattr(umap, "AlignedUMAP", RecordingAligned)
    assert project_pair(x, x, method="aligned", use_cache=False)[1].shape == (n, 2)


def test_a_sequence_of_maps_is_chained_and_aligned_frame_to_frame(tmp_path, monkeypatch):
    """Three slightly moved copies of one space: every frame lands where the one before it was (chained
    starts + Procrustes), the first equals `project_pair`'s pre-trained map, and a second call is a cache hit."""
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 3 * np.pi, 200))
    x0 = np.stack([t * np.cos(t), t * np.sin(t)] + [np.zeros_like(t)] * 6, axis=1) + 0.3 * rng.normal(size=(200, 8))
    xs = [(x0 + s * 0.05 * rng.normal(size=x0.shape)).astype(np.float32) for s in range(3)]
    maps = project_sequence(xs, metric="euclidean")
    assert maps.shape == (3, 200, 2) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], project_pair(xs[0], xs[1], metric="euclidean")[0], atol=1e-5)
    extent = np.linalg.norm(maps[0].max(0) - maps[0].min(0))
    for s in (1, 2):
        assert np.median(np.linalg.norm(maps[s] - maps[s - 1], axis=1)) < 0.15 * extent
    monkeypatch.setattr(projection, "_umap", lambda **kwargs: (_ for _ in ()).throw(AssertionError("refit")))
    np.testing.assert_array_equal(project_sequence(xs, metric="euclidean"), maps)
    with pytest.raises(ProxyFDAError, match="same points"):
        project_sequence([xs[0], xs[1][:100]])


def test_projection_input_errors():
    x = np.zeros((30, 4), dtype=np.float32)
    with pytest.raises(ProxyFDAError, match="same points"):
        project_pair(x, x[:20])
    with pytest.raises(ProxyFDAError, match="unknown projection method"):
        project_pair(x, x, method="tsne")
    with pytest.raises(ProxyFDAError, match="the 2D maps need at least 4 images, got 3"):
        project_pair(x[:3], x[:3])
    with pytest.raises(ProxyFDAError, match="at least 4 images"):
        project_sequence([x[:3], x[:3]])


def test_a_linear_map_projects_other_rows_on_the_basis_principal_axes():
    """Rows are centred on the basis's mean (which lands on the origin) and projected on its first two principal
    axes, as numpy's SVD gives them (up to each axis's sign)."""
    from proxyfda.projection import linear_map

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(40, 5)) * [5.0, 2.0, 1.0, 0.5, 0.1] + 3.0
    x = rng.normal(size=(7, 5)) + 10.0
    _, _, vt = np.linalg.svd(basis - basis.mean(0), full_matrices=False)
    expected = (x - basis.mean(0)) @ vt[:2].T
    got = linear_map(x, fit_on=basis)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), rtol=1e-5)
    np.testing.assert_allclose(linear_map(basis.mean(0, keepdims=True), fit_on=basis), 0.0, atol=1e-5)
