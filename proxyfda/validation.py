"""Input checks shared by `knn` and `metrics`: each failure raises a ProxyFDAError saying what to fix."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .errors import ProxyFDAError

#: how many offending row indices an error message lists
_SHOW_ROWS = 5
#: rows per block where a whole-array float64 temporary would be as large as the input or more
_ROW_BLOCK = 4096


def check_features(x: Any, name: str = "x", dtype: type = np.float32) -> np.ndarray:
    """`x` (numpy array or torch tensor, [N, d]) as a C-contiguous array of `dtype`, finite and 2D.

    Finite values too large for `dtype` (e.g. 1e200 for float32) are refused as such, with their
    largest magnitude, not as NaN: the cast would have turned them into inf.
    """
    source = _to_numpy(x, name)
    arr = _cast(source, name, dtype)
    if arr.ndim != 2:
        raise ProxyFDAError(f"{name} must be a 2D array [N points, d features], got shape {arr.shape}; "
                            "reshape it (e.g. x.reshape(len(x), -1))")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ProxyFDAError(f"{name} is empty (shape {arr.shape}); it needs at least one point and one feature")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ProxyFDAError(_non_finite_message(source, bad, name, arr.dtype))
    return arr


def _non_finite_message(source: np.ndarray, bad: np.ndarray, name: str, dtype: np.dtype) -> str:
    """Why rows `bad` of the cast array are not finite: NaN/inf in `source`, or an overflow of the cast."""
    if source.dtype.kind not in "fiu" or not np.isfinite(source[bad]).all():
        if source.dtype.kind in "fiu":  # only the rows NaN or inf before the cast
            bad = ~np.isfinite(source).all(axis=1)
        return f"{name} has {int(bad.sum())} row(s) with NaN or inf values {_rows(bad)}; drop or fix those points first"
    peak = float(np.abs(source[bad]).max())
    return (f"{name} has {int(bad.sum())} row(s) {_rows(bad)} with values too large for {dtype} (largest "
            f"magnitude {peak:.3g}; {dtype} holds "
            f"up to {float(np.finfo(dtype).max):.3g}): divide the features by a constant first, e.g. "
            "x / np.abs(x).max(); cosine neighbourhoods, CKA and Procrustes do not change under that")


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows of `x` in float64, without overflow or underflow for any finite row.

    Each row is first scaled by the power of two nearest its largest magnitude, which is exact in
    floating point, so ordinary rows get bit-for-bit the same norms as ``np.linalg.norm(x, axis=1)``
    while rows near 1e200 (whose squares overflow) or 1e-200 (whose squares vanish) stay exact.
    Rows are taken `_ROW_BLOCK` at a time: a float64 copy of a 100k × 1280 space would be 1 GB.
    """
    x = np.asarray(x)
    norms = np.empty(len(x))
    for start in range(0, len(x), _ROW_BLOCK):
        block = np.asarray(x[start:start + _ROW_BLOCK], dtype=np.float64)
        _, exponents = np.frexp(np.abs(block).max(axis=1))
        norms[start:start + len(block)] = np.ldexp(np.linalg.norm(np.ldexp(block, -exponents[:, None]), axis=1),
                                                   exponents)
    return norms


def rescaled(x: np.ndarray) -> np.ndarray:
    """`x` (float64) multiplied by the power of two that brings its largest magnitude into [0.5, 1).

    For the scale-invariant scores (CKA, Procrustes, ranks, cosine neighbours): their products of
    features would overflow near 1e154 or vanish near 1e-154, and a power-of-two scaling is exact,
    so ordinary inputs give bit-for-bit the same results.
    """
    x = np.asarray(x, dtype=np.float64)
    peak = np.abs(x).max() if x.size else 0.0
    if not peak > 0:
        return x
    return np.ldexp(x, -np.frexp(peak)[1])


def unit_rows(x: np.ndarray, name: str, fix: str, norms: np.ndarray | None = None) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm (same dtype); an all-zero row has no direction and is refused
    with a message naming the rows and `fix`, what the user can do instead. ``norms``: the rows' norms
    from `nonzero_norms`, when the caller checked them already."""
    norms = nonzero_norms(x, name, fix) if norms is None else norms
    out = np.empty(x.shape, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    for start in range(0, len(x), _ROW_BLOCK):  # divided in float64, one block of rows at a time
        rows = slice(start, start + _ROW_BLOCK)
        out[rows] = x[rows] / norms[rows, None]
    return out


def nonzero_norms(x: np.ndarray, name: str, fix: str) -> np.ndarray:
    """`row_norms` of `x`, refusing all-zero rows (no direction to normalise) with their row numbers and `fix`."""
    norms = row_norms(x)
    zero = ~(norms > 0)
    if zero.any():
        raise ProxyFDAError(f"{name} has {int(zero.sum())} all-zero row(s) {_rows(zero)}, which have no "
                            f"direction to normalise: {fix}")
    return norms


def check_same_n(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Both inputs must describe the same N points, row for row."""
    if a.shape[0] != b.shape[0]:
        raise ProxyFDAError(f"{name_a} has shape {a.shape} and {name_b} has shape {b.shape}: they must have the "
                            "same number of rows (one per point, in the same order)")


def check_k(k: Any, n: int) -> int:
    """k as an int with 1 ≤ k ≤ n-1 (a point is never its own neighbour)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ProxyFDAError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ProxyFDAError(f"k must be at least 1, got k={k}")
    if k >= n:
        raise ProxyFDAError(f"k must be smaller than the number of points N={n}, pick k ≤ N-1 = {n - 1} "
                            f"(got k={k})")
    return int(k)


def check_block_size(block_size: Any, default: int) -> int:
    """Rows per block: `default` when None, else a positive integer."""
    if block_size is None:
        return default
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ProxyFDAError(f"block_size must be a positive integer (rows per block) or None for the default, "
                            f"got {block_size!r}")
    return int(block_size)


def check_choice(value: Any, options: Iterable[str], what: str) -> str:
    """`value` must be one of `options`; the message lists them."""
    options = list(options)
    if value not in options:
        raise ProxyFDAError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, options))}")
    return value


def check_graph(idx: Any, name: str = "idx") -> np.ndarray:
    """A kNN index array [N, k] of non-negative ints pointing at rows 0..N-1, distinct within each row.

    A row with a repeated id is refused rather than counted once: it is not a kNN graph (the scores
    divide by k, so a repeat would count a neighbour twice, e.g. overlap@k above 1), and quietly
    deduplicating it would hide the bug that made it."""
    arr = np.asarray(idx)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ProxyFDAError(f"{name} must be a kNN index array [N points, k neighbours], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ProxyFDAError(f"{name} must hold integer row indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= arr.shape[0]):
        raise ProxyFDAError(f"{name} holds indices outside 0..N-1 = 0..{arr.shape[0] - 1} "
                            f"(min {arr.min()}, max {arr.max()}); was it built on a different set of points?")
    ordered = np.sort(arr, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if repeated.any():
        raise ProxyFDAError(f"{name} lists the same neighbour twice in {int(repeated.sum())} row(s) {_rows(repeated)}; "
                            "a kNN graph's row holds k distinct points: build it with knn_graph, or drop the repeats")
    return arr


def check_graphs(idx_a: Any, idx_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two kNN index arrays over the same points with the same k."""
    a, b = check_graph(idx_a, "idx_a"), check_graph(idx_b, "idx_b")
    if a.shape != b.shape:
        raise ProxyFDAError(f"idx_a has shape {a.shape} and idx_b has shape {b.shape}: both graphs must cover "
                            "the same N points with the same k")
    return a, b


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """`x` as a numpy array in its own precision (a torch tensor is moved to the CPU first)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if not x.dtype.is_floating_point or x.dtype.itemsize < 4:  # e.g. bfloat16 has no numpy dtype
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ProxyFDAError(f"{name} must be a numeric array or tensor [N, d]; could not convert it: {exc}") from exc


def _cast(source: np.ndarray, name: str, dtype: type) -> np.ndarray:
    """`source` as a C-contiguous `dtype` array; an overflow of the cast shows up as inf, explained later."""
    try:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(source, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ProxyFDAError(f"{name} must be a numeric array or tensor [N, d]; could not convert it: {exc}") from exc


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(map(str, rows[:_SHOW_ROWS]))
    return f"(rows {shown}{', ...' if len(rows) > _SHOW_ROWS else ''})"
