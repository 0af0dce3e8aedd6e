"""Drift metrics against sklearn/scipy references and hand-built examples with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import procrustes
from scipy.stats import ortho_group
from sklearn.manifold import trustworthiness as sk_trustworthiness

from proxyfda import metrics as M
from proxyfda.errors import ProxyFDAError
from proxyfda.knn import knn_graph


@pytest.fixture(scope="module")
def spaces() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [60, 10]; a noisy 2D projection of it; an unrelated space of the same size."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 10))
    projected = x[:, :2] + 0.3 * rng.standard_normal((60, 2))
    unrelated = rng.standard_normal((60, 5))
    return x, projected, unrelated


def rotation(d: int, seed: int = 0) -> np.ndarray:
    return ortho_group.rvs(d, random_state=seed)


def sklearn_reference(x_ref: np.ndarray, x_other: np.ndarray, k: int, metric: str) -> float:
    """sklearn's trustworthiness with `metric` in both spaces: sklearn finds x_other's neighbours by
    euclidean distance, which on unit rows orders them as cosine does."""
    if metric == "cosine":
        x_other = x_other / np.linalg.norm(x_other, axis=1, keepdims=True)
    return sk_trustworthiness(x_ref, x_other, n_neighbors=k, metric=metric)


# ---------------------------------------------------------------- trustworthiness / continuity


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("other", ["projected", "unrelated"])
def test_trustworthiness_equals_sklearn(spaces, metric, k, other):
    x, y = spaces[0], spaces[1 if other == "projected" else 2]
    ours = M.trustworthiness(x, y, k, metric=metric, block_size=7)
    assert ours == pytest.approx(sklearn_reference(x, y, k, metric), abs=1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [3, 9])
def test_continuity_is_trustworthiness_swapped(spaces, metric, k):
    x, y, _ = spaces
    assert M.continuity(x, y, k, metric=metric) == pytest.approx(sklearn_reference(y, x, k, metric), abs=1e-9)


def test_block_size_does_not_change_the_result(spaces):
    x, y, _ = spaces
    values = {M.trustworthiness(x, y, 4, block_size=b) for b in (1, 7, 59, 60, 1000)}
    assert max(values) - min(values) < 1e-12


def test_given_neighbours_replace_the_search(spaces):
    """A cosine graph of y reproduces the default; a euclidean one, sklearn's raw metric="cosine"."""
    x, y, _ = spaces
    cosine_graph = knn_graph(y, 8, metric="cosine").indices
    assert M.trustworthiness(x, y, 5, metric="cosine", neighbours=cosine_graph) == pytest.approx(
        M.trustworthiness(x, y, 5, metric="cosine"), abs=1e-12)
    euclidean_graph = knn_graph(y, 5, metric="l2").indices
    assert M.trustworthiness(x, y, 5, metric="cosine", neighbours=euclidean_graph) == pytest.approx(
        sk_trustworthiness(x, y, n_neighbors=5, metric="cosine"), abs=1e-9)
    # continuity searches x: given x's euclidean graph, it is sklearn's with the roles swapped
    assert M.continuity(x, y, 5, metric="cosine", neighbours=knn_graph(x, 5, metric="l2").indices) == pytest.approx(
        sk_trustworthiness(y, x, n_neighbors=5, metric="cosine"), abs=1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_identical_spaces_are_trustworthy(spaces, metric):
    x = spaces[0]
    assert M.trustworthiness(x, x, 5, metric=metric) == pytest.approx(1.0, abs=1e-12)
    assert M.continuity(x, x, 5, metric=metric) == pytest.approx(1.0, abs=1e-12)


def test_trustworthiness_needs_k_below_half_n(spaces):
    x, y, _ = spaces
    with pytest.raises(ProxyFDAError, match=r"k < N/2 = 30 \(got k=30\); pick k ≤ 29"):
        M.trustworthiness(x, y, 30)
    assert M.trustworthiness(x, y, 29) == pytest.approx(sklearn_reference(x, y, 29, "euclidean"), abs=1e-9)


def test_trustworthiness_bad_inputs(spaces):
    x, y, _ = spaces
    with pytest.raises(ProxyFDAError, match=r"\(60, 10\).*\(59, 2\)"):
        M.trustworthiness(x, y[:59], 3)
    bad = y.copy()
    bad[4, 0] = np.nan
    with pytest.raises(ProxyFDAError, match=r"x_other has 1 row\(s\) with NaN or inf values \(rows 4\)"):
        M.trustworthiness(x, bad, 3)
    with pytest.raises(ProxyFDAError, match="unknown metric 'l1'"):
        M.trustworthiness(x, y, 3, metric="l1")
    with pytest.raises(ProxyFDAError, match="own neighbour"):
        M.trustworthiness(x, y, 2, neighbours=np.stack([np.arange(60), (np.arange(60) + 1) % 60], axis=1))
    ring = np.stack([(np.arange(60) + s) % 60 for s in (1, 2, 3)], axis=1)
    with pytest.raises(ProxyFDAError, match=r"^neighbours has shape \(59, 3\); it needs N=60 rows and at least k=3"):
        M.trustworthiness(x, y, 3, neighbours=np.stack([(np.arange(59) + s) % 59 for s in (1, 2, 3)], axis=1))
    with pytest.raises(ProxyFDAError, match=r"^neighbours has shape \(60, 2\); it needs N=60 rows and at least k=3"):
        M.trustworthiness(x, y, 3, neighbours=ring[:, :2])
    with pytest.raises(ProxyFDAError, match=r"^neighbours "):
        M.trustworthiness(x, y, 3, neighbours=ring.astype(float))
    with pytest.raises(ProxyFDAError, match=r"x_ref has 1 row\(s\) with NaN"):  # names follow the roles
        M.continuity(bad, y, 3)
    zero = x.copy()
    zero[[2, 5]] = 0.0
    says = r" has 2 all-zero row\(s\) \(rows 2, 5\), which have no direction to normalise: drop those points or use " \
           r"metric='euclidean'$"
    with pytest.raises(ProxyFDAError, match="^x_ref" + says):
        M.trustworthiness(zero, y, 3, metric="cosine")
    with pytest.raises(ProxyFDAError, match="^x_other" + says):  # the space searched for neighbours
        M.trustworthiness(y, zero, 3, metric="cosine")


# ---------------------------------------------------------------- neighbourhood overlap


def test_overlap_and_jaccard_hand_example():
    idx_a = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    idx_b = np.array([[3, 2, 1], [2, 3, 4], [4, 5, 0], [0, 1, 2], [3, 5, 2], [3, 4, 0]])
    np.testing.assert_allclose(M.knn_overlap(idx_a, idx_b), [1, 2 / 3, 1 / 3, 1, 1 / 3, 1 / 3])
    np.testing.assert_allclose(M.jaccard(idx_a, idx_b), [1, 2 / 4, 1 / 5, 1, 1 / 5, 1 / 5])


def test_identical_graphs_overlap_fully(spaces):
    idx = knn_graph(spaces[0], 6).indices
    shuffled = np.random.default_rng(0).permuted(idx, axis=1)
    assert (M.knn_overlap(idx, shuffled) == 1).all()
    assert (M.jaccard(idx, shuffled) == 1).all()


def test_unrelated_spaces_overlap_at_chance():
    rng = np.random.default_rng(3)
    n, k = 2000, 10
    idx_a = knn_graph(rng.standard_normal((n, 6)), k, metric="l2").indices
    idx_b = knn_graph(rng.standard_normal((n, 6)), k, metric="l2").indices
    overlap = M.knn_overlap(idx_a, idx_b)
    standard_error = overlap.std() / np.sqrt(n)
    assert M.overlap_random_baseline(k, n) == k / (n - 1)
    assert abs(overlap.mean() - k / (n - 1)) < 4 * standard_error


def test_neighbour_sets():
    kept, lost, gained = M.neighbour_sets(np.array([5, 1, 7, 3]), np.array([3, 9, 5, 2]))
    np.testing.assert_array_equal(kept, [5, 3])
    np.testing.assert_array_equal(lost, [1, 7])
    np.testing.assert_array_equal(gained, [9, 2])


def test_overlap_bad_inputs():
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    with pytest.raises(ProxyFDAError, match=r"\(3, 2\).*\(3, 1\)"):
        M.knn_overlap(idx, idx[:, :1])
    with pytest.raises(ProxyFDAError, match="outside 0..N-1"):
        M.jaccard(idx, idx + 1)
    with pytest.raises(ProxyFDAError, match="integer"):
        M.knn_overlap(idx.astype(float), idx)
    with pytest.raises(ProxyFDAError, match="N=10"):
        M.overlap_random_baseline(10, 10)


# ---------------------------------------------------------------- CKA, Procrustes, L2 drift


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Reference linear CKA in its N×N (HSIC) form."""
    x, y = x - x.mean(0), y - y.mean(0)
    gx, gy = x @ x.T, y @ y.T
    return float((gx * gy).sum() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def test_cka_matches_gram_form(spaces):
    x, y, z = spaces
    assert M.linear_cka(x, y) == pytest.approx(gram_cka(x, y), abs=1e-12)
    assert M.linear_cka(x, z) == pytest.approx(gram_cka(x, z), abs=1e-12)


def test_cka_identical_and_invariant(spaces):
    x, y, _ = spaces
    assert M.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    transformed = 3.5 * x @ rotation(10) + 7.0
    assert M.linear_cka(x, transformed) == pytest.approx(1.0, abs=1e-12)
    assert M.linear_cka(transformed, y) == pytest.approx(M.linear_cka(x, y), abs=1e-12)


def test_procrustes_matches_scipy(spaces):
    x, _, z = spaces
    y = x[:, :4] @ rotation(4) + 0.5 * z[:, :4]
    assert M.procrustes_disparity(x[:, :4], y) == pytest.approx(procrustes(x[:, :4], y)[2], abs=1e-12)


def test_procrustes_pads_the_narrower_space(spaces):
    x, y, _ = spaces
    padded = np.pad(y, ((0, 0), (0, x.shape[1] - y.shape[1])))
    assert M.procrustes_disparity(x, y) == pytest.approx(procrustes(x, padded)[2], abs=1e-12)
    assert M.procrustes_disparity(y, x) == pytest.approx(procrustes(padded, x)[2], abs=1e-12)


def test_procrustes_identical_and_invariant(spaces):
    x, y, _ = spaces
    assert M.procrustes_disparity(x, x) == pytest.approx(0.0, abs=1e-12)
    moved = 0.2 * x @ rotation(10, seed=4) - 3.0
    assert M.procrustes_disparity(x, moved) == pytest.approx(0.0, abs=1e-12)
    assert M.procrustes_disparity(moved, y) == pytest.approx(M.procrustes_disparity(x, y), abs=1e-12)


def test_mean_l2_drift_hand_example():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 1.0], [0.0, 5.0]])
    assert M.mean_l2_drift(a, b) == pytest.approx(np.sqrt(2) / 2)
    assert M.mean_l2_drift(a, b, normalize=False) == pytest.approx((np.sqrt(2) + 3) / 2)
    assert M.mean_l2_drift(a, a) == 0.0


def test_global_metrics_bad_inputs(spaces):
    x, y, _ = spaces
    with pytest.raises(ProxyFDAError, match="all rows identical"):
        M.linear_cka(np.ones((5, 3)), x[:5])
    with pytest.raises(ProxyFDAError, match=r"\(60, 10\).*\(50, 2\)"):
        M.procrustes_disparity(x, y[:50])
    with pytest.raises(ProxyFDAError, match="same feature width"):
        M.mean_l2_drift(x, y)
    with pytest.raises(ProxyFDAError, match=r"^x_b has 1 all-zero row\(s\) \(rows 0\), which have no direction to "
                                            r"normalise: drop those points or pass normalize=False$"):
        M.mean_l2_drift(np.ones((2, 2)), np.array([[0.0, 0.0], [1.0, 1.0]]))


# ---------------------------------------------------------------- per-class drift


@pytest.fixture
def two_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6 points, classes [0 0 0 1 1 1], k=2; A: pure class neighbourhoods; B: a few swapped."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    idx_a = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    idx_b = np.array([[1, 3], [0, 2], [4, 5], [4, 5], [3, 5], [3, 0]])
    return idx_a, idx_b, labels


def test_class_composition(two_classes):
    idx_a, idx_b, labels = two_classes
    np.testing.assert_allclose(M.class_composition(idx_a, labels, 2), np.eye(2))
    np.testing.assert_allclose(M.class_composition(idx_b, labels, 3),
                               [[1 / 2, 1 / 2, 0], [1 / 6, 5 / 6, 0], [0, 0, 0]])


def test_class_drift_hand_example(two_classes):
    idx_a, idx_b, labels = two_classes
    table = M.class_drift(idx_a, idx_b, labels, ["cat", "dog", "bird"])  # no bird in the sample
    assert list(table.columns) == ["class", "n", "overlap_at_k", "same_class_a", "same_class_b", "composition_tv"]
    assert table["class"].tolist() == ["cat", "dog"]
    assert table["n"].tolist() == [3, 3]
    np.testing.assert_allclose(table["overlap_at_k"], [(0.5 + 1 + 0) / 3, (1 + 1 + 0.5) / 3])
    np.testing.assert_allclose(table["same_class_a"], [1, 1])
    np.testing.assert_allclose(table["same_class_b"], [1 / 2, 5 / 6])
    np.testing.assert_allclose(table["composition_tv"], [1 / 2, 1 / 6])


def test_class_drift_without_names(two_classes):
    idx_a, _, labels = two_classes
    table = M.class_drift(idx_a, idx_a, labels)
    assert table["class"].tolist() == [0, 1]
    np.testing.assert_allclose(table[["overlap_at_k", "same_class_a", "same_class_b"]], 1.0)
    np.testing.assert_allclose(table["composition_tv"], 0.0)


def test_class_drift_bad_labels(two_classes):
    idx_a, idx_b, labels = two_classes
    with pytest.raises(ProxyFDAError, match=r"labels must lie in 0..1"):
        M.class_drift(idx_a, idx_b, labels + 1, ["cat", "dog"])
    with pytest.raises(ProxyFDAError, match="one class id per point"):
        M.class_drift(idx_a, idx_b, labels[:5])
    with pytest.raises(ProxyFDAError, match="integer class ids"):
        M.class_drift(idx_a, idx_b, labels.astype(str))


def test_rank_preservation_is_trustworthiness_and_continuity_on_checked_inputs():
    """The drift report's shortcut (unit rows and graphs already checked) equals the public functions."""
    from proxyfda.knn import knn_graph
    from proxyfda.metrics import continuity, rank_preservation, trustworthiness

    rng = np.random.default_rng(5)
    a = rng.normal(size=(80, 6))
    b = a + 0.8 * rng.normal(size=(80, 6))
    unit_a, unit_b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    idx_a, idx_b = knn_graph(a, 7).indices, knn_graph(b, 7).indices
    t, c = rank_preservation(unit_a, unit_b, idx_a, idx_b)
    assert t == pytest.approx(trustworthiness(a, b, 7, metric="cosine", neighbours=idx_b), abs=1e-12)
    assert c == pytest.approx(continuity(a, b, 7, metric="cosine", neighbours=idx_a), abs=1e-12)
    assert t < 1.0 and c < 1.0


def _dense_cknna(x_a, x_b, k):
    """CKNNA written out densely: N×N cosine kernels, kNN masks by sorting, unbiased HSIC by its formula."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def knn_mask(gram):
        scores = gram.copy()
        np.fill_diagonal(scores, -np.inf)
        mask = np.zeros_like(gram)
        np.put_along_axis(mask, np.argsort(-scores, axis=1)[:, :k], 1.0, axis=1)
        return mask

    def hsic(K, L):
        n = len(K)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0.0)
        np.fill_diagonal(L, 0.0)
        value = np.sum(K * L.T) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(K @ L) / (n - 2)
        return value / (n * (n - 3))

    K, L = unit(x_a) @ unit(x_a).T, unit(x_b) @ unit(x_b).T
    mask_k, mask_l = knn_mask(K), knn_mask(L)
    both = mask_k * mask_l
    return hsic(both * K, both * L) / np.sqrt(hsic(mask_k * K, mask_k * K) * hsic(mask_l * L, mask_l * L))


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_cknna_equals_its_dense_definition(noise):
    rng = np.random.default_rng(int(noise * 10))
    x_a = rng.normal(size=(90, 12))
    x_b = np.concatenate([x_a, np.zeros((90, 3))], axis=1) + noise * rng.normal(size=(90, 15))  # other width
    assert M.cknna(x_a, x_b, 6) == pytest.approx(_dense_cknna(x_a, x_b, 6), rel=1e-6, abs=1e-9)


def test_cknna_on_identical_and_unrelated_spaces():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    assert M.cknna(x, 3.0 * x, 10) == pytest.approx(1.0)  # scale does not matter: cosine kernels
    other = rng.normal(size=(200, 16))
    unrelated = M.cknna(x, other, 10)
    assert abs(unrelated) < 0.2 and unrelated == pytest.approx(_dense_cknna(x, other, 10), rel=1e-6, abs=1e-9)


def test_cknna_of_graphs_that_share_no_pair_is_zero():
    """No pair is a neighbour pair in both spaces: the restricted cross term is empty, so CKNNA is 0 (a random
    re-pairing at k = 1 does this; it used to crash the calibration inside scipy)."""
    from proxyfda.knn import knn_graph, KnnGraph

    rng = np.random.default_rng(0)
    graph = knn_graph(rng.normal(size=(60, 5)), 1)
    for _ in range(100):  # a re-pairing of the same space under which no point keeps its neighbour
        perm = rng.permutation(60)
        inverse = np.argsort(perm)
        moved = KnnGraph(inverse[graph.indices[perm]], graph.similarities[perm])
        if not (moved.indices == graph.indices).any():
            break
    assert not (moved.indices == graph.indices).any()
    assert M.cknna(None, None, 1, graphs=(graph, moved)) == 0.0


def _lcs(a, b):
    """Textbook dynamic-programming longest common subsequence."""
    table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1, j + 1] = table[i, j] + 1 if x == y else max(table[i, j + 1], table[i + 1, j])
    return table[-1, -1]


def test_order_agreement_equals_lcs_over_k():
    rng = np.random.default_rng(1)
    n, k = 40, 7
    idx_a = np.stack([rng.permutation([j for j in range(n) if j != i])[:k] for i in range(n)])
    idx_b = idx_a.copy()
    for i in range(n):  # shuffle some, replace some
        rng.shuffle(idx_b[i][: rng.integers(0, k + 1)])
        others = [j for j in range(n) if j != i and j not in idx_b[i]]
        idx_b[i][rng.integers(0, k)] = rng.choice(others)
    expected = np.array([_lcs(list(a), list(b)) for a, b in zip(idx_a, idx_b)]) / k
    np.testing.assert_array_equal(M.order_agreement(idx_a, idx_b), expected)
    assert (M.order_agreement(idx_a, idx_b) <= M.knn_overlap(idx_a, idx_b)).all()
    assert (M.order_agreement(idx_a, idx_a) == 1.0).all()
    reversed_order = M.order_agreement(idx_a, idx_a[:, ::-1])
    np.testing.assert_array_equal(reversed_order, np.full(n, 1 / k))  # same neighbours, opposite order


# ---------------------------------------------------------------- errors name the argument that is wrong

#: (function, its two space arguments' names, extra arguments): a NaN in either space must be named
NAMED_SPACES = [(M.trustworthiness, ("x_ref", "x_other"), (3,)), (M.continuity, ("x_ref", "x_other"), (3,)),
                (M.mean_l2_drift, ("x_a", "x_b"), ()), (M.linear_cka, ("x", "y"), ()),
                (M.procrustes_disparity, ("x", "y"), ()), (M.cknna, ("x_a", "x_b"), (3,))]


@pytest.mark.parametrize("function, names, extra", NAMED_SPACES, ids=[f.__name__ for f, _, _ in NAMED_SPACES])
@pytest.mark.parametrize("bad", [0, 1])
def test_a_bad_space_is_named_by_its_argument(function, names, extra, bad):
    rng = np.random.default_rng(0)
    spaces = [rng.normal(size=(20, 4)), rng.normal(size=(20, 4))]
    spaces[bad][3, 1] = np.nan
    with pytest.raises(ProxyFDAError, match=rf"^{names[bad]} has 1 row\(s\) with NaN or inf values \(rows 3\)"):
        function(*spaces, *extra)


@pytest.mark.parametrize("function", [M.knn_overlap, M.jaccard, M.order_agreement])
@pytest.mark.parametrize("bad", [0, 1])
def test_a_bad_graph_is_named_by_its_argument(function, bad):
    graphs = [np.array([[1, 2], [0, 2], [0, 1]]), np.array([[1, 2], [0, 2], [0, 1]])]
    graphs[bad] = np.array([[1, 1], [0, 2], [0, 1]])  # row 0 lists point 1 twice
    with pytest.raises(ProxyFDAError, match=rf"^{('idx_a', 'idx_b')[bad]} "):
        function(*graphs)


@pytest.mark.parametrize("metric, reference", [("cosine", "cosine"), ("euclidean", "sqeuclidean")])
def test_rank_blocks_hold_the_distances_they_rank_by(metric, reference):
    """One block of the rank computation: rows start:stop against every row, cosine distances of unit rows or
    squared euclidean distances (scipy's cdist by its own formula)."""
    from scipy.spatial.distance import cdist

    x = np.random.default_rng(2).normal(size=(9, 4))
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = np.empty((3, 9))
    block = M._block_distances(x, (x * x).sum(axis=1), 4, 7, metric, out)
    np.testing.assert_allclose(block, cdist(x[4:7], x, reference), atol=1e-12)
    assert block is out  # written into the reused buffer


@pytest.mark.parametrize("far", [0.0, 0.9])  # most entries below the thresholds, or few (the sparse pass)
def test_closer_counts_are_strict_and_cover_every_row(far):
    """_count_closer: per row and threshold, how many distances are strictly below it, ties not counted; the
    last rows count too when nothing is closer (the counts' length is the block's). Thresholds are entries of
    their row, so every one of them is tied with at least one distance."""
    rng = np.random.default_rng(4)
    dist = np.round(rng.random((6, 40)) * 4) / 4  # quarter steps: many exact ties
    dist[rng.random(dist.shape) < far] = 9.0  # far entries, above every threshold
    thresholds = np.sort(np.stack([rng.choice(row[row < 9], size=3) for row in dist]), axis=1)
    thresholds[-1] = dist[-1].min()  # nothing strictly closer than the last row's own minimum
    below = (dist < thresholds.max(axis=1, keepdims=True)).mean()
    assert (below > 0.25) if far == 0 else (below < 0.25)  # each case takes the pass it is meant to
    expected = (dist[:, None, :] < thresholds[:, :, None]).sum(-1)
    np.testing.assert_array_equal(M._count_closer(dist, thresholds), expected)
    assert M._count_closer(dist, thresholds).dtype.kind == "i"


def test_the_permuted_cross_product_is_y_transposed_x_of_the_repaired_rows():
    """Geometry.cross_gram(p) = Yᵀ X of the centred, rescaled spaces with y's rows in p's order: the identity
    gives back the unpermuted product; a permutation gives what re-pairing the rows by hand gives."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 3)) * 1000.0
    geometry = M.Geometry(x, y)
    np.testing.assert_allclose(geometry.cross_gram(np.arange(30)), geometry.cross, rtol=1e-12)
    p = rng.permutation(30)
    np.testing.assert_allclose(geometry.cross_gram(p), M.Geometry(x, y[p]).cross, rtol=1e-10)

