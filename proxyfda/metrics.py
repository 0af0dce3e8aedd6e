"""How much two feature spaces over the same N points agree: neighbourhoods, ranks and global geometry.

Per-point scores are numpy arrays [N]; global scores are floats. Inputs are checked by
`proxyfda.validation`, so a bad shape, NaN or k raises a ProxyFDAError that says what to fix.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .errors import ProxyFDAError
from .knn import knn_graph
from .validation import (check_block_size, check_choice, check_features, check_graph, check_graphs, check_k,
                         check_same_n, rescaled, row_norms, unit_rows)

#: bytes of one [block, N] distance block in the rank computation
_RANK_BLOCK_BYTES = 1 << 26
#: ranks are computed in float64 while a float64 copy of a space fits in this many bytes (`rank_dtype`)
_RANK_FLOAT64_BYTES = 1 << 28
#: rows per block when the d×d Gram matrices of CKA and Procrustes are accumulated (float64 blocks)
_GRAM_BLOCK_ROWS = 2048

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
    ranked, searched = paired(x_ranked, x_searched, *names)
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
    dtype = rank_dtype(*ranked.shape)
    block_size = check_block_size(block_size, _rank_block_size(n, dtype))
    return _intrusion_score(ranked.astype(dtype, copy=False), _check_neighbours(neighbours, n, k), metric, block_size)


def rank_preservation(unit_a: np.ndarray, unit_b: np.ndarray, idx_a: np.ndarray,
                      idx_b: np.ndarray) -> tuple[float, float]:
    """(trustworthiness, continuity) of space B w.r.t. space A with the cosine metric, for callers
    that have checked everything once already: unit rows of both spaces and their self-free kNN
    graphs [N, k] with k < N/2. Equal to ``trustworthiness(a, b, k, "cosine", neighbours=idx_b)`` and
    ``continuity(a, b, k, "cosine", neighbours=idx_a)``: `rank_score` twice."""
    return rank_score(unit_a, idx_b), rank_score(unit_b, idx_a)


def rank_score(unit_ranked: np.ndarray, neighbours: np.ndarray,
               progress: Callable[[int], None] | None = None) -> float:
    """sklearn's T(k) with the cosine metric for checked inputs: the neighbourhoods ``neighbours`` (a self-free
    kNN graph [N, k] of the other space, k < N/2) ranked in the space whose unit rows are ``unit_ranked``.
    Trustworthiness of B w.r.t. A is ``rank_score(unit_a, idx_b)``, continuity ``rank_score(unit_b, idx_a)``.
    Ranked in `rank_dtype` (float32 for large spaces) one block of rows at a time; ``progress(rows done)``
    hears after each block: at N=100k one call takes minutes."""
    n, d = unit_ranked.shape
    dtype = rank_dtype(n, d)
    return _intrusion_score(unit_ranked.astype(dtype, copy=False), neighbours, "cosine", _rank_block_size(n, dtype),
                            progress)


def rank_dtype(n: int, d: int) -> type:
    """The precision ranks are computed in: float64 while a float64 copy of the [n, d] space stays under
    `_RANK_FLOAT64_BYTES` (bit-for-bit sklearn's ranks), float32 beyond (half the memory, twice the
    matmul speed; a distance tie closer than float32's resolution may then count as strictly closer)."""
    return np.float64 if n * d * 8 <= _RANK_FLOAT64_BYTES else np.float32


def _rank_block_size(n: int, dtype: type) -> int:
    return max(1, _RANK_BLOCK_BYTES // (n * np.dtype(dtype).itemsize))


def _intrusion_score(ranked: np.ndarray, neighbours: np.ndarray, metric: str, block_size: int,
                     progress: Callable[[int], None] | None = None) -> float:
    """1 − the normalised sum of how far beyond rank k each neighbour sits in ``ranked`` (sklearn's T(k))."""
    n, k = neighbours.shape
    ranks = _ranks(ranked, neighbours, metric, block_size, progress)
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


def _ranks(x: np.ndarray, neighbours: np.ndarray, metric: str, block_size: int,
           progress: Callable[[int], None] | None = None) -> np.ndarray:
    """rank[i, j] of point neighbours[i, j] among all points ordered by distance from i in x (unit rows
    for cosine): 1 + the number of other points strictly closer to i (sklearn's rank without ties).
    Memory: one reused [block, N] distance block in x's dtype."""
    sq_norms = (x * x).sum(axis=1)
    n, k = neighbours.shape
    ranks = np.empty((n, k), dtype=np.int64)
    buffer = np.empty((min(block_size, n), n), dtype=x.dtype)  # reused: no page faults per block
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        dist = _block_distances(x, sq_norms, start, stop, metric, buffer[: stop - start])
        np.fill_diagonal(dist[:, start:], np.inf)  # a point is not its own neighbour
        to_neighbour = np.take_along_axis(dist, neighbours[start:stop], axis=1)
        ranks[start:stop] = 1 + _count_closer(dist, to_neighbour)
        if progress:
            progress(stop)
    return ranks


def _count_closer(dist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[b, k]: how many entries of each row of ``dist`` [b, N] are strictly below each of that row's k
    ``thresholds``. One pass keeps the entries below the row's largest threshold; when neighbourhoods are
    mostly kept those are few, and only they are compared k times (at N=100k this is 5× faster than k
    passes over the block). Spaces that share little get the k plain passes."""
    b, k = thresholds.shape
    below = dist < thresholds.max(axis=1, keepdims=True)
    if 4 * np.count_nonzero(below) > below.size:
        return np.stack([np.count_nonzero(dist < thresholds[:, j:j + 1], axis=1) for j in range(k)], axis=1)
    rows, cols = np.nonzero(below)
    values = dist[rows, cols]
    counts = np.empty((b, k), dtype=np.int64)
    for j in range(k):
        counts[:, j] = np.bincount(rows[values < thresholds[rows, j]], minlength=b)
    return counts


def _block_distances(x: np.ndarray, sq_norms: np.ndarray, start: int, stop: int, metric: str,
                     out: np.ndarray) -> np.ndarray:
    """Distances (rank-equivalent to sklearn's) from rows start:stop to all rows, written into ``out``:
    cosine distance, or squared euclidean distance."""
    dots = np.matmul(x[start:stop], x.T, out=out)
    if metric == "cosine":
        np.subtract(1.0, dots, out=dots)
        return dots
    dots *= -2.0
    dots += sq_norms[start:stop, None]
    dots += sq_norms[None, :]
    return dots


# ---------------------------------------------------------------- global geometry


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA of [N, d1] and [N, d2] features: 1 = same geometry up to rotation and isotropic scale.

    Uses the feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) of the centred data: O(N d²) time and O(d²)
    memory (`Geometry`). Each space is rescaled first (CKA ignores scale), so features near 1e200 or
    1e-200, whose fourth powers are out of float64's range, still give the exact value.
    """
    return Geometry(*paired(x, y)).linear_cka()


def procrustes_disparity(x: Any, y: Any) -> float:
    """Disparity of `scipy.spatial.procrustes(x, y)`: sum of squared differences after centring, scaling
    to unit Frobenius norm and the best orthogonal map + scale; 0 = same shape. Invariant to translation,
    rotation and scale. Different widths behave as if the smaller were zero-padded.

    With unit-norm X, Y the optimum is 1 - (nuclear norm of XᵀY)², so no rotated copy is built: only the
    d×d Gram matrices of `Geometry`. Each space is rescaled first, as in `linear_cka`.
    """
    return Geometry(*paired(x, y)).procrustes_disparity()


class Geometry:
    """The centred Gram matrices XᵀX, YᵀY and YᵀX of two spaces over the same N points, from which CKA and
    Procrustes both follow. They are accumulated over row blocks in float64 (each space rescaled by a power
    of two, so nothing overflows), so memory is O(d²) beyond the inputs, never a float64 copy of a space:
    at N=100k, d=1280 that copy alone would be 1 GB per space. `permuted_cka` reuses XᵀX and YᵀY."""

    def __init__(self, x: np.ndarray, y: np.ndarray, names: tuple[str, str] = ("x", "y")):
        self.x, self.y = x, y
        self._exp_x, self._exp_y = _peak_exponent(x), _peak_exponent(y)
        self._mean_x = self._column_mean(x, self._exp_x, names[0])
        self._mean_y = self._column_mean(y, self._exp_y, names[1])
        self.gram_x, self.gram_y = np.zeros((x.shape[1], x.shape[1])), np.zeros((y.shape[1], y.shape[1]))
        self.cross = np.zeros((y.shape[1], x.shape[1]))
        for start in range(0, len(x), _GRAM_BLOCK_ROWS):  # one pass: each block centred once for all three
            rows = slice(start, start + _GRAM_BLOCK_ROWS)
            block_x = _centred_block(x[rows], self._exp_x, self._mean_x)
            block_y = _centred_block(y[rows], self._exp_y, self._mean_y)
            self.gram_x += block_x.T @ block_x
            self.gram_y += block_y.T @ block_y
            self.cross += block_y.T @ block_x

    def linear_cka(self, cross: np.ndarray | None = None) -> float:
        cross = self.cross if cross is None else cross
        return float(np.linalg.norm(cross) ** 2 / (np.linalg.norm(self.gram_x) * np.linalg.norm(self.gram_y)))

    def procrustes_disparity(self) -> float:
        return float(max(0.0, 1.0 - self._nuclear() ** 2 / (np.trace(self.gram_x) * np.trace(self.gram_y))))

    def _nuclear(self) -> float:
        """The nuclear norm of YᵀX. With fewer points than features (a 359-image probe set, 1280-d) it has rank
        ≤ N, and with Xᵀ = Q_x R_x, Yᵀ = Q_y R_y it shares its singular values with the N×N product R_y R_xᵀ:
        0.01 s instead of a 1280×1280 SVD's 0.36 s, paid by every snapshot of a run's timeline."""
        n = len(self.x)
        if n >= min(self.x.shape[1], self.y.shape[1]) or n > _GRAM_BLOCK_ROWS:
            return float(np.linalg.svd(self.cross, compute_uv=False).sum())
        r_x = np.linalg.qr(_centred_block(self.x.astype(np.float64), self._exp_x, self._mean_x).T, mode="r")
        r_y = np.linalg.qr(_centred_block(self.y.astype(np.float64), self._exp_y, self._mean_y).T, mode="r")
        return float(np.linalg.svd(r_y @ r_x.T, compute_uv=False).sum())

    def permuted_cka(self, permutation: np.ndarray) -> float:
        """CKA when row i of x is paired with row ``permutation[i]`` of y (the permutation null)."""
        return self.linear_cka(self.cross_gram(permutation))

    def cross_gram(self, permutation: np.ndarray) -> np.ndarray:
        """Yᵀ X of the centred, rescaled spaces [d_y, d_x] with y's rows taken in ``permutation`` order."""
        out = np.zeros((self.y.shape[1], self.x.shape[1]))
        for start in range(0, len(self.x), _GRAM_BLOCK_ROWS):
            rows = slice(start, start + _GRAM_BLOCK_ROWS)
            out += (_centred_block(self.y[permutation[rows]], self._exp_y, self._mean_y).T
                    @ _centred_block(self.x[rows], self._exp_x, self._mean_x))
        return out

    @staticmethod
    def _column_mean(x: np.ndarray, exponent: int, name: str) -> np.ndarray:
        total, varies = np.zeros(x.shape[1]), False
        for start in range(0, len(x), _GRAM_BLOCK_ROWS):
            block = x[start:start + _GRAM_BLOCK_ROWS]
            varies = varies or bool((block != x[0]).any())
            total += np.ldexp(block.astype(np.float64), -exponent).sum(axis=0)
        if not varies:
            raise ProxyFDAError(f"{name} has all rows identical, so it has no geometry to compare; "
                                "check that the features were extracted from different images")
        return total / len(x)


def _peak_exponent(x: np.ndarray) -> int:
    """The power of two that brings x's largest magnitude into [0.5, 1) (0 for an all-zero x), as `rescaled`."""
    peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
    return int(np.frexp(peak)[1]) if peak > 0 else 0


def _centred_block(block: np.ndarray, exponent: int, mean: np.ndarray) -> np.ndarray:
    """A block of rows rescaled and centred, in float64 for float64 input; float32 input stays float32 (the
    products of one block are then float32 sums of 2048 terms, accumulated across blocks in float64: twice
    as fast, and no less exact than the float32 features themselves)."""
    centred = np.ldexp(block.astype(np.float64), -exponent) - mean
    return centred if block.dtype == np.float64 else centred.astype(np.float32)


def mean_l2_drift(x_a: Any, x_b: Any, normalize: bool = True) -> float:
    """Mean euclidean distance between each point's two feature vectors (rows L2-normalised first by
    default, so the value is in [0, 2] and ignores feature scale)."""
    a, b = paired(x_a, x_b, "x_a", "x_b")
    if a.shape[1] != b.shape[1]:
        raise ProxyFDAError(f"x_a has shape {a.shape} and x_b has shape {b.shape}: L2 drift needs the same "
                            "feature width in both spaces")
    if normalize:
        return float(unit_distances(a, b, fix="drop those points or pass normalize=False").mean())
    return float(row_norms(a.astype(np.float64) - b).mean())


def unit_distances(a: np.ndarray, b: np.ndarray, permutation: np.ndarray | None = None,
                   fix: str = "drop those points") -> np.ndarray:
    """Per point, the euclidean distance between its L2-normalised rows of ``a`` and ``b`` (b's rows taken
    in ``permutation`` order if given), in float64 one block of rows at a time: no float64 copy of a space."""
    out = np.empty(len(a))
    for start in range(0, len(a), _GRAM_BLOCK_ROWS):
        rows = slice(start, start + _GRAM_BLOCK_ROWS)
        rows_b = b[rows] if permutation is None else b[permutation[rows]]
        out[rows] = np.linalg.norm(unit_rows(np.asarray(a[rows], np.float64), "x_a", fix)
                                   - unit_rows(np.asarray(rows_b, np.float64), "x_b", fix), axis=1)
    return out


def paired(x: Any, y: Any, name_x: str = "x", name_y: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Both inputs checked, float32 arrays kept as they are (a float64 copy of a 100k × 1280 space is 1 GB),
    anything else as float64."""
    a, b = check_features(x, name_x, _float_dtype(x)), check_features(y, name_y, _float_dtype(y))
    check_same_n(a, b, name_x, name_y)
    return a, b


def _float_dtype(x: Any) -> type:
    return np.float32 if getattr(x, "dtype", None) == np.float32 else np.float64


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
        a, b = paired(x_a, x_b, "x_a", "x_b")
        k = check_k(k, len(a))
        fix = "drop those points"
        graphs = (knn_graph(unit_rows(a, "x_a", fix), k), knn_graph(unit_rows(b, "x_b", fix), k))
    graph_a, graph_b = graphs
    a_idx, a_sim = np.asarray(graph_a.indices)[:, :k], np.asarray(graph_a.similarities, np.float64)[:, :k]
    b_idx, b_sim = np.asarray(graph_b.indices)[:, :k], np.asarray(graph_b.similarities, np.float64)[:, :k]
    n = len(a_idx)
    if n < 4:
        raise ProxyFDAError(f"CKNNA's unbiased estimate needs at least 4 points, got {n}")
    position = positions_in(a_idx, b_idx)  # [N, k]: where a's neighbour a_idx[i, j] sits in b's list, or -1
    shared = position >= 0
    b_on_a = np.take_along_axis(b_sim, np.maximum(position, 0), axis=1)[shared]  # b's similarity of each shared pair
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    kl = _hsic_unbiased(_sparse(n, a_idx[shared], a_sim[shared], rows[shared]),
                        _sparse(n, a_idx[shared], b_on_a, rows[shared]), n)
    kk = _hsic_unbiased(_sparse(n, a_idx, a_sim), _sparse(n, a_idx, a_sim), n)
    ll = _hsic_unbiased(_sparse(n, b_idx, b_sim), _sparse(n, b_idx, b_sim), n)
    if kk <= 0 or ll <= 0:
        raise ProxyFDAError("CKNNA is undefined here: a space's kNN-restricted kernel has no variance "
                            "(are all its features identical?)")
    return float(kl / np.sqrt(kk * ll))


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

    On distinct ids the LCS of two lists is the longest strictly increasing run of one list's positions
    in the other, found by an O(k²) dynamic programme vectorised over all points (100k points, k=10: 0.1 s).
    """
    a, b = check_graphs(idx_a, idx_b)
    position = positions_in(a, b)
    present = position >= 0
    longest = np.zeros(position.shape, dtype=np.int64)  # longest increasing run ending at each present entry
    for j in range(a.shape[1]):
        before = present[:, :j] & (position[:, :j] < position[:, j:j + 1])
        best = np.where(before, longest[:, :j], 0).max(axis=1, initial=0)
        longest[:, j] = np.where(present[:, j], best + 1, 0)
    return longest.max(axis=1) / a.shape[1]


def positions_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, k_a]: where each of a's neighbours of point i sits in b's list for i (0 = nearest), -1 if absent.

    One sort of all (point, neighbour) keys instead of an [N, k_a, k_b] comparison: O(N·k) memory."""
    n = len(a)
    rows = np.arange(n, dtype=np.int64)[:, None]
    keys_b = (rows * n + b).ravel()
    order = np.argsort(keys_b, kind="stable")
    sorted_b = keys_b[order]
    keys_a = (rows * n + a).ravel()
    at = np.minimum(np.searchsorted(sorted_b, keys_a), len(sorted_b) - 1)
    found = sorted_b[at] == keys_a
    return np.where(found, order[at] % b.shape[1], -1).reshape(a.shape)


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
