"""knn_graph against a brute-force numpy reference, on every backend this machine has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxyfda.errors import ProxyFDAError
from proxyfda.knn import KnnGraph, available_backends, knn_graph, resolve_backend

BACKENDS = ["auto", *available_backends()]
METRICS = ["cosine", "ip", "l2"]


def brute_similarities(x: np.ndarray, metric: str) -> np.ndarray:
    """Full [N, N] float64 similarity matrix (larger = closer), self on the diagonal set to -inf."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    if metric == "l2":
        sq = (x * x).sum(axis=1)
        sims = 2 * sims - sq[:, None] - sq[None, :]
    np.fill_diagonal(sims, -np.inf)
    return sims


def assert_matches_brute(graph: KnnGraph, x: np.ndarray, k: int, metric: str) -> None:
    """Same top-k similarities as brute force, and every returned index really has its similarity.

    Comparing similarities rather than indices keeps the check exact under ties.
    """
    idx, sims = graph
    n = len(x)
    assert idx.shape == sims.shape == (n, k)
    assert idx.dtype == np.int64 and sims.dtype == np.float32
    full = brute_similarities(x, metric)
    expected = -np.sort(-full, axis=1)[:, :k]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(sims, expected, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(np.take_along_axis(full, idx, axis=1), sims, rtol=1e-5, atol=1e-5 * scale)
    assert (idx != np.arange(n)[:, None]).all(), "a point is listed as its own neighbour"
    assert all(len(set(row)) == k for row in idx.tolist()), "a neighbour is listed twice"
    assert (np.diff(sims, axis=1) <= 1e-6 * scale).all(), "rows are not sorted by decreasing similarity"


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def duplicated() -> np.ndarray:
    """20 points each present 3 times, plus one point present 9 times (more copies than k+1)."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 8)).astype(np.float32)
    crowd = np.repeat(rng.standard_normal((1, 8)).astype(np.float32), 9, axis=0)
    return rng.permutation(np.concatenate([np.repeat(base, 3, axis=0), crowd]))


@pytest.fixture(scope="module")
def many_with_duplicates() -> np.ndarray:
    """3000 points: 900 present 3 times each, one present 40 times, 260 singletons."""
    rng = np.random.default_rng(2)
    tripled = np.repeat(rng.standard_normal((900, 8)), 3, axis=0)
    crowd = np.repeat(rng.standard_normal((1, 8)), 40, axis=0)
    return rng.permutation(np.concatenate([tripled, crowd, rng.standard_normal((260, 8))])).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_matches_brute_force(points, backend, metric):
    assert_matches_brute(knn_graph(points, 7, metric=metric, backend=backend), points, 7, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_small_blocks_match_brute_force(points, metric):
    """Several blocks, the last one partial: the self mask must follow each block's offset."""
    graph = knn_graph(points, 5, metric=metric, backend="torch", block_size=13)
    assert_matches_brute(graph, points, 5, metric)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_duplicates_never_list_self(duplicated, backend, metric):
    assert_matches_brute(knn_graph(duplicated, 4, metric=metric, backend=backend), duplicated, 4, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_grouped_topk_matches_brute_force(many_with_duplicates, metric, monkeypatch):
    """The top-k prefilter (normally for N ≳ 20k) on groups small enough for 3000 points, with a tail."""
    import proxyfda.knn as knn

    monkeypatch.setattr(knn, "_GROUP", 16)
    x, k = many_with_duplicates, 5
    assert len(x) >= knn._PREFILTER_MIN_GROUPS_PER_K * k * knn._GROUP and len(x) % knn._GROUP
    assert_matches_brute(knn_graph(x, k, metric=metric, backend="torch", block_size=700), x, k, metric)


def test_grouped_topk_on_wide_rows():
    """At its real size the prefilter returns exactly torch.topk's values, ties included."""
    from proxyfda.knn import _block_topk

    scores = torch.from_numpy(np.random.default_rng(4).integers(0, 3000, (40, 25_003)).astype(np.float32))
    values, columns = _block_topk(scores, 10)
    torch.testing.assert_close(values, torch.topk(scores, 10, dim=1).values)
    torch.testing.assert_close(scores.gather(1, columns), values)
    assert all(len(set(row)) == 10 for row in columns.tolist())


def test_k_can_be_n_minus_one(points):
    small = points[:10]
    for backend in BACKENDS:
        assert_matches_brute(knn_graph(small, 9, metric="l2", backend=backend), small, 9, "l2")


@pytest.mark.parametrize("make", [
    lambda x: torch.from_numpy(x),
    lambda x: torch.from_numpy(x).double(),
    lambda x: torch.from_numpy(x).half(),
    lambda x: x.astype(np.float64),
    lambda x: x.tolist(),
], ids=["torch32", "torch64", "torch16", "numpy64", "list"])
def test_input_types(points, make):
    data = make(points)
    graph = knn_graph(data, 5, metric="ip")
    reference = np.asarray(torch.as_tensor(data).float() if isinstance(data, torch.Tensor) else data, dtype=np.float64)
    assert_matches_brute(graph, reference, 5, "ip")


def test_unpacks_as_tuple(points):
    idx, sims = knn_graph(points, 3)
    assert idx.shape == sims.shape == (len(points), 3)


def test_auto_is_torch_on_cpu_only_machine():
    import faiss

    if torch.cuda.is_available() or faiss.get_num_gpus() > 0:
        pytest.skip("this machine has a GPU")
    assert resolve_backend("auto", 1000) == "torch"
    assert "faiss-gpu" not in available_backends()
    with pytest.raises(ProxyFDAError, match="GPU"):
        knn_graph(np.eye(5, dtype=np.float32), 2, backend="faiss-gpu")


def test_available_backends_are_accepted():
    assert available_backends()[0] == "torch"
    for backend in available_backends():
        assert resolve_backend(backend, 100) == backend


# ---------------------------------------------------------------- bad input


def error_message(x, k, **kwargs) -> str:
    with pytest.raises(ProxyFDAError) as info:
        knn_graph(x, k, **kwargs)
    return str(info.value)


def test_k_not_smaller_than_n(points):
    message = error_message(points[:10], 10)
    assert "k must be smaller than the number of points N=10" in message
    assert "k ≤ N-1" in message


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one(points, k):
    assert "at least 1" in error_message(points, k)


def test_k_not_an_integer(points):
    assert "integer" in error_message(points, 2.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_named(points, bad):
    x = points.copy()
    x[[3, 7, 8, 20, 30, 41, 50], 2] = bad
    message = error_message(x, 3)
    assert "7 row(s) with NaN or inf" in message
    assert "rows 3, 7, 8, 20, 30, ..." in message


def test_zero_rows_for_cosine(points):
    x = points.copy()
    x[[5, 9]] = 0.0
    message = error_message(x, 3, metric="cosine")
    assert "2 all-zero row(s) (rows 5, 9)" in message
    assert "metric='l2'" in message
    knn_graph(x, 3, metric="l2")  # fine without cosine


def test_not_2d():
    assert "2D" in error_message(np.zeros(10, dtype=np.float32), 2)
    assert "2D" in error_message(np.zeros((4, 3, 2), dtype=np.float32), 2)


def test_unknown_metric_and_backend(points):
    message = error_message(points, 3, metric="manhattan")
    assert "unknown metric 'manhattan'" in message and "'cosine'" in message
    message = error_message(points, 3, backend="annoy")
    assert "unknown kNN backend 'annoy'" in message and "'torch'" in message


def test_drop_self_keeps_k_of_k_plus_one():
    """FAISS may return self anywhere among k+1 results, or (with many duplicates) not at all."""
    from proxyfda.knn import _drop_self

    indices = np.array([[3, 0, 2], [2, 3, 1], [0, 2, 3], [1, 2, 0]])  # rows 0, 2 hold self; rows 1, 3 do not
    sims = -np.arange(12, dtype=np.float32).reshape(4, 3)
    kept, kept_sims = _drop_self(indices, sims, 2)
    np.testing.assert_array_equal(kept, [[3, 2], [2, 3], [0, 3], [1, 2]])
    np.testing.assert_array_equal(kept_sims, [[0, -2], [-3, -4], [-6, -8], [-9, -10]])


@pytest.mark.parametrize("block_size", [0, -2, 1.5])
def test_bad_block_size(points, block_size):
    assert "block_size must be a positive integer" in error_message(points, 3, block_size=block_size)
