"""How much two feature spaces over the same N points agree: neighbourhoods, ranks and global geometry.

Per-point scores are numpy arrays [N]; global scores are floats. Inputs are checked by
`proxyfda.validation`, so a bad shape, NaN or k raises a ProxyFDAError that says what to fix.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import ProxyFDAError
from .knn import knn_graph
from .validation import (check_block_size, check_choice, check_features, check_graph, check_graphs, check_k,
                         check_same_n, rescaled, row_norms, unit_rows)

#: float64 elements of one [block, N] distance block in the rank computation (64 MB)
_RANK_BLOCK_ELEMENTS = 1 << 23

# ---------------------------------------------------------------- neighbourhood agreement


def knn_overlap(idx_a: Any, idx_b: Any) -> np.ndarray:
    """overlap@k per point: |N_a(i) ∩ N_b(i)| / k, the share of i's k neighbours found in both graphs.

    Not Jaccard (see `jaccard`). Rows of a kNN graph hold distinct indices; a row that repeats one is
    refused with its row number (`proxyfda.validation.check_graph`).
    """
    a, b = check_graphs(idx_a, idx_b)
    return _shared_counts(a, b) / a.shape[1]


def jaccard(idx_a: Any, idx_b: Any) -> np.ndarray:
    """|N_a(i) ∩ N_b(i)| / |N_a(i) ∪ N_b(i)| per point."""
    a, b = check_graphs(idx_a, idx_b)
    shared = _shared_counts(a, b)
    return shared / (2 * a.shape[1] - shared)


def overlap_random_baseline(k: int, n: int) -> float:
    """Expected overlap@k of two unrelated kNN graphs on n points: k / (n - 1)."""
    k = check_k(k, n)
    return k / (n - 1)


def neighbour_sets(idx_a_row: Any, idx_b_row: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point's neighbours split into (kept: in both, in A's order; lost: A only; gained: B only)."""
    a, b = np.asarray(idx_a_row).ravel(), np.asarray(idx_b_row).ravel()
    in_b = np.isin(a, b)
    return a[in_b], a[~in_b], b[~np.isin(b, a)]


def _shared_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|N_a(i) ∩ N_b(i)| per point: in the sorted concatenation of both rows each shared index appears twice."""
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)


# ---------------------------------------------------------------- rank-based preservation


def trustworthiness(x_ref: Any, x_other: Any, k: int, metric: str = "euclidean", block_size: int | None = None,
                    neighbours: Any = None) -> float:
    """Trustworthiness of `x_other` w.r.t. `x_ref` (Venna & Kaski): 1 = no intruders among the k neighbours.

    `metric` ("euclidean" or "cosine") is used in both spaces, so identical spaces score 1. For
    "euclidean" this equals ``sklearn.manifold.trustworthiness(x_ref, x_other, n_neighbors=k)``; for
    "cosine" it equals sklearn with metric="cosine" on L2-normalised x_other rows (sklearn applies
    `metric` to x_ref only and always finds x_other's neighbours by euclidean distance). Like sklearn
    it needs k < N/2. It never builds an N×N matrix: x_ref is ranked in row blocks (block_size rows,
    default ~64 MB each). `neighbours` ([N, ≥k] indices, e.g. a `knn_graph` of x_other already
    computed) replaces the kNN search in x_other.
    """
    return _trustworthiness(x_ref, x_other, k, metric, block_size, neighbours, ("x_ref", "x_other"))


def continuity(x_ref: Any, x_other: Any, k: int, metric: str = "euclidean", block_size: int | None = None,
               neighbours: Any = None) -> float:
    """Continuity: the fraction of x_ref's neighbourhoods kept in x_other (1 = nothing torn apart).

    It is `trustworthiness` with the roles swapped: neighbours come from x_ref (or `neighbours`, a
    kNN graph of x_ref), ranks from x_other; `metric` is used in both spaces.
    """
    return _trustworthiness(x_other, x_ref, k, metric, block_size, neighbours, ("x_other", "x_ref"))


def _trustworthiness(x_ranked: Any, x_searched: Any, k: int, metric: str, block_size: int | None,
                     neighbours: Any, names: tuple[str, str]) -> float:
    """sklearn's T(k): neighbourhoods found in x_searched, penalised by their ranks in x_ranked."""
    check_choice(metric, ("euclidean", "cosine"), "metric")
    ranked, searched = _paired(x_ranked, x_searched, *names)
    n = ranked.shape[0]
    k = check_k(k, n)
    if k >= n / 2:
        raise ProxyFDAError(f"trustworthiness needs k < N/2 = {n / 2:g} (got k={k}); pick k ≤ {(n - 1) // 2} "
                            "or use more points")
    if metric == "cosine":
        fix = "drop those points or use metric='euclidean'"
        ranked, searched = unit_rows(ranked, names[0], fix), unit_rows(searched, names[1], fix)
    else:  # ranks ignore a common scale, and rescaling keeps the float32 search and squared distances finite
        ranked, searched = rescaled(ranked), rescaled(searched)
    if neighbours is None:  # on unit rows the inner product orders neighbours as cosine does
        neighbours = knn_graph(searched, k, metric="l2" if metric == "euclidean" else "ip").indices
    block_size = check_block_size(block_size, max(1, _RANK_BLOCK_ELEMENTS // n))
    return _intrusion_score(ranked, _check_neighbours(neighbours, n, k), metric, block_size)


def rank_preservation(unit_a: np.ndarray, unit_b: np.ndarray, idx_a: np.ndarray,
                      idx_b: np.ndarray) -> tuple[float, float]:
    """(trustworthiness, continuity) of space B w.r.t. space A with the cosine metric, for callers
    that have checked everything once already: unit rows of both spaces and their self-free kNN
    graphs [N, k] with k < N/2 (as `proxyfda.drift.compute_drift` has). Equal to
    ``trustworthiness(a, b, k, "cosine", neighbours=idx_b)`` and ``continuity(a, b, k, "cosine",
    neighbours=idx_a)``."""
    a, b = unit_a.astype(np.float64, copy=False), unit_b.astype(np.float64, copy=False)
    block_size = max(1, _RANK_BLOCK_ELEMENTS // len(a))
    return (_intrusion_score(a, idx_b, "cosine", block_size), _intrusion_score(b, idx_a, "cosine", block_size))


def _intrusion_score(ranked: np.ndarray, neighbours: np.ndarray, metric: str, block_size: int) -> float:
    """1 − the normalised sum of how far beyond rank k each neighbour sits in ``ranked`` (sklearn's T(k))."""
    n, k = neighbours.shape
    ranks = _ranks(ranked, neighbours, metric, block_size)
    penalty = np.maximum(ranks - k, 0).sum(dtype=np.float64)
    return float(1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def _check_neighbours(neighbours: Any, n: int, k: int) -> np.ndarray:
    idx = check_graph(neighbours, "neighbours")
    if idx.shape[0] != n or idx.shape[1] < k:
        raise ProxyFDAError(f"neighbours has shape {idx.shape}; it needs N={n} rows and at least k={k} columns")
    idx = idx[:, :k]
    if (idx == np.arange(n)[:, None]).any():
        raise ProxyFDAError("neighbours lists some points as their own neighbour; build it with knn_graph, "
                            "which excludes self")
    return idx


def _ranks(x: np.ndarray, neighbours: np.ndarray, metric: str, block_size: int) -> np.ndarray:
    """rank[i, j] of point neighbours[i, j] among all points ordered by distance from i in x (unit rows
    for cosine): 1 + the number of other points strictly closer to i (sklearn's rank without ties)."""
    sq_norms = (x * x).sum(axis=1)
    n, k = neighbours.shape
    ranks = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        dist = _block_distances(x, sq_norms, start, stop, metric)
        np.fill_diagonal(dist[:, start:], np.inf)  # a point is not its own neighbour
        to_neighbour = np.take_along_axis(dist, neighbours[start:stop], axis=1)
        # one [block, N] comparison per neighbour column keeps memory at block × N
        for j in range(k):
            ranks[start:stop, j] = 1 + np.count_nonzero(dist < to_neighbour[:, j:j + 1], axis=1)
    return ranks


def _block_distances(x: np.ndarray, sq_norms: np.ndarray, start: int, stop: int, metric: str) -> np.ndarray:
    """Distances (rank-equivalent to sklearn's) from rows start:stop to all rows: cosine distance, or
    squared euclidean distance."""
    dots = x[start:stop] @ x.T
    if metric == "cosine":
        return 1.0 - dots
    dots *= -2.0
    dots += sq_norms[start:stop, None]
    dots += sq_norms[None, :]
    return dots


# ---------------------------------------------------------------- global geometry


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA of [N, d1] and [N, d2] features: 1 = same geometry up to rotation and isotropic scale.

    Uses the feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) of the centred data: O(N d²), float64.
    Each space is rescaled first (CKA ignores scale), so features near 1e200 or 1e-200, whose
    fourth powers are out of float64's range, still give the exact value.
    """
    a, b = _paired(x, y)
    a, b = _centred(rescaled(a), "x"), _centred(rescaled(b), "y")
    cross = np.linalg.norm(b.T @ a) ** 2
    return float(cross / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def procrustes_disparity(x: Any, y: Any) -> float:
    """Disparity of `scipy.spatial.procrustes(x, y)`: sum of squared differences after centring, scaling
    to unit Frobenius norm and the best orthogonal map + scale; 0 = same shape. Invariant to translation,
    rotation and scale. Different widths behave as if the smaller were zero-padded.

    With unit-norm X, Y the optimum is 1 - (nuclear norm of XᵀY)², so no rotated copy is built. Each
    space is rescaled first, as in `linear_cka`, so its Frobenius norm cannot overflow.
    """
    a, b = _paired(x, y)
    a, b = _unit_frobenius(_centred(rescaled(a), "x")), _unit_frobenius(_centred(rescaled(b), "y"))
    nuclear = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    return float(max(0.0, 1.0 - nuclear ** 2))


def mean_l2_drift(x_a: Any, x_b: Any, normalize: bool = True) -> float:
    """Mean euclidean distance between each point's two feature vectors (rows L2-normalised first by
    default, so the value is in [0, 2] and ignores feature scale)."""
    a, b = _paired(x_a, x_b, "x_a", "x_b")
    if a.shape[1] != b.shape[1]:
        raise ProxyFDAError(f"x_a has shape {a.shape} and x_b has shape {b.shape}: L2 drift needs the same "
                            "feature width in both spaces")
    if normalize:
        fix = "drop those points or pass normalize=False"
        a, b = unit_rows(a, "x_a", fix), unit_rows(b, "x_b", fix)
    return float(row_norms(a - b).mean())


def _paired(x: Any, y: Any, name_x: str = "x", name_y: str = "y") -> tuple[np.ndarray, np.ndarray]:
    a, b = check_features(x, name_x, np.float64), check_features(y, name_y, np.float64)
    check_same_n(a, b, name_x, name_y)
    return a, b


def _centred(x: np.ndarray, name: str) -> np.ndarray:
    if not np.ptp(x, axis=0).any():
        raise ProxyFDAError(f"{name} has all rows identical, so it has no geometry to compare; "
                            "check that the features were extracted from different images")
    return x - x.mean(axis=0)


def _unit_frobenius(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


# ---------------------------------------------------------------- kNN-restricted and order-aware agreement


def cknna(x_a: Any, x_b: Any, k: int, graphs: tuple[Any, Any] | None = None) -> float:
    """CKNNA (Huh et al. 2024, "The Platonic Representation Hypothesis"): unbiased CKA of the two cosine
    kernels, each restricted to the pairs (i, j) where j is among i's k nearest neighbours (self
    excluded) in *both* spaces; normalised by the same quantity of each space with itself.

    Works on the kNN graphs alone, in O(N·k) memory: a masked kernel has at most k entries per row.
    ``graphs`` (the two `KnnGraph`s of the L2-normalised rows, e.g. a `DriftReport`'s) skips the
    search. 1 = the same local geometry; about 0 for unrelated spaces.
    """
    if graphs is None:  # unit rows first: cosine neighbours ignore scale, and huge features fit float32 then
        a, b = _paired(x_a, x_b, "x_a", "x_b")
        k = check_k(k, len(a))
        fix = "drop those points"
        graphs = (knn_graph(unit_rows(a, "x_a", fix), k), knn_graph(unit_rows(b, "x_b", fix), k))
    graph_a, graph_b = graphs
    a_idx, a_sim = np.asarray(graph_a.indices)[:, :k], np.asarray(graph_a.similarities, np.float64)[:, :k]
    b_idx, b_sim = np.asarray(graph_b.indices)[:, :k], np.asarray(graph_b.similarities, np.float64)[:, :k]
    n = len(a_idx)
    if n < 4:
        raise ProxyFDAError(f"CKNNA's unbiased estimate needs at least 4 points, got {n}")
    shared = _shared_mask(a_idx, b_idx)  # [N, k]: is a_idx[i, j] also among b's neighbours of i?
    # b's similarity for the shared pairs, looked up by neighbour id
    b_lookup = _sparse(n, b_idx, b_sim)
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    b_on_a = np.asarray(b_lookup[rows[shared], a_idx[shared]]).ravel()
    kl = _hsic_unbiased(_sparse(n, a_idx[shared], a_sim[shared], rows[shared]),
                        _sparse(n, a_idx[shared], b_on_a, rows[shared]), n)
    kk = _hsic_unbiased(_sparse(n, a_idx, a_sim), _sparse(n, a_idx, a_sim), n)
    ll = _hsic_unbiased(_sparse(n, b_idx, b_sim), _sparse(n, b_idx, b_sim), n)
    if kk <= 0 or ll <= 0:
        raise ProxyFDAError("CKNNA is undefined here: a space's kNN-restricted kernel has no variance "
                            "(are all its features identical?)")
    return float(kl / np.sqrt(kk * ll))


def _shared_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, k] booleans: whether each of a's neighbours of i is also one of b's neighbours of i."""
    return (a[:, :, None] == b[:, None, :]).any(axis=2)


def _sparse(n: int, cols: np.ndarray, values: np.ndarray, rows: np.ndarray | None = None):
    """An [n, n] CSR matrix with ``values`` at (row, col); ``rows`` defaults to each row of ``cols``."""
    from scipy.sparse import csr_matrix

    if rows is None:
        rows = np.repeat(np.arange(n), cols.shape[1])
    return csr_matrix((np.ravel(values), (np.ravel(rows), np.ravel(cols))), shape=(n, n))


def _hsic_unbiased(K, L, n: int) -> float:
    """Song et al.'s unbiased HSIC of two [n, n] kernels with zero diagonals (sparse allowed):
    (tr(KL) + 1ᵀK1·1ᵀL1/((n−1)(n−2)) − 2·1ᵀKL1/(n−2)) / (n(n−3))."""
    trace = float(K.multiply(L.T).sum())
    sums = float(K.sum()) * float(L.sum()) / ((n - 1) * (n - 2))
    cross = float(np.asarray(K.sum(axis=0)).ravel() @ np.asarray(L.sum(axis=1)).ravel())
    return (trace + sums - 2.0 * cross / (n - 2)) / (n * (n - 3))


def order_agreement(idx_a: Any, idx_b: Any) -> np.ndarray:
    """Per point: the longest common subsequence of its two neighbour lists (nearest first) over k.

    1 = the same neighbours in the same order; overlap@k counts shared neighbours whatever their
    order, this also asks that they keep their ranking. Always ≤ overlap@k.
    """
    a, b = check_graphs(idx_a, idx_b)
    n, k = a.shape
    out = np.empty(n)
    for i in range(n):
        position = {int(node): rank for rank, node in enumerate(b[i])}
        out[i] = _longest_increasing([position[int(node)] for node in a[i] if int(node) in position])
    return out / k


def _longest_increasing(sequence: list[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting, O(k log k)): on distinct
    ids, the LCS of two lists is the LIS of one list's positions in the other."""
    from bisect import bisect_left

    tails: list[int] = []
    for value in sequence:
        at = bisect_left(tails, value)
        tails[at:at + 1] = [value]
    return len(tails)


# ---------------------------------------------------------------- per-class drift


def class_composition(idx: Any, labels: Any, n_classes: int) -> np.ndarray:
    """[C, C] matrix whose row c is the label distribution of the neighbours of class-c points.

    A class with no points gets a row of zeros (so a heatmap of differences stays finite).
    """
    graph = check_graph(idx, "idx")
    lab = _check_labels(labels, graph.shape[0], n_classes)
    pairs = np.repeat(lab, graph.shape[1]) * n_classes + lab[graph].ravel()
    counts = np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def class_drift(idx_a: Any, idx_b: Any, labels: Any, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per class present in `labels` (integer ids 0..C-1; C = len(class_names) if given):

    class, n, overlap_at_k (mean over its points), same_class_a / same_class_b (share of its points'
    neighbours with the same label in graph A / B) and composition_tv (total-variation distance
    between its neighbour-label compositions in A and B: 0 = same mix of classes, 1 = disjoint).
    """
    a, b = check_graphs(idx_a, idx_b)
    n_classes = len(class_names) if class_names is not None else _max_label(labels) + 1
    lab = _check_labels(labels, a.shape[0], n_classes)
    comp_a, comp_b = class_composition(a, lab, n_classes), class_composition(b, lab, n_classes)
    sizes = np.bincount(lab, minlength=n_classes)
    overlap_sums = np.bincount(lab, weights=knn_overlap(a, b), minlength=n_classes)
    table = pd.DataFrame({
        "class": list(class_names) if class_names is not None else np.arange(n_classes),
        "n": sizes,
        "overlap_at_k": overlap_sums / np.maximum(sizes, 1),
        "same_class_a": np.diag(comp_a),
        "same_class_b": np.diag(comp_b),
        "composition_tv": 0.5 * np.abs(comp_a - comp_b).sum(axis=1),
    })
    return table[sizes > 0].reset_index(drop=True)


def _max_label(labels: Any) -> int:
    lab = np.asarray(labels)
    return int(lab.max()) if lab.size and np.issubdtype(lab.dtype, np.integer) else 0


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    """Integer class ids in 0..n_classes-1, one per point."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ProxyFDAError(f"labels has shape {lab.shape}; it needs one class id per point, shape ({n},)")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ProxyFDAError(f"labels must be integer class ids 0..C-1, got dtype {lab.dtype}; map names to ids "
                            "with np.unique(labels, return_inverse=True)")
    if n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ProxyFDAError(f"labels must lie in 0..{n_classes - 1} (C={n_classes} classes), got "
                            f"{lab.min()}..{lab.max()}; pass class_names covering every label")
    return lab.astype(np.int64)
