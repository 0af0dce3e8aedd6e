"""Two UMAP maps of the same points, one per feature space, placed so they can be compared.

2D positions are only a hint of what changed: the high-dimensional kNN drift
(`proxyfda.metrics.knn_overlap`) is the measurement. Methods:

- ``init`` (default): fit map A; fit map B starting from A's layout; Procrustes-align B onto A.
  Points that kept their neighbourhoods stay close to where they were. Components of the kNN
  graph that are disconnected from each other can still trade places (UMAP does not attract
  them), so this alignment holds best on a connected neighbourhood graph.
- ``independent``: fit both from UMAP's own spectral start; Procrustes-align B onto A.
- ``aligned``: ``umap.AlignedUMAP`` over both spaces with the identity relation (slowest).

`project_sequence` extends ``init`` to a run's feature spaces over time: each map starts from the
previous one and is Procrustes-aligned to it, so a point that keeps its neighbours barely moves between
frames.

The first UMAP fit in a process compiles numba code (about a minute on two cores);
`warm_up` pays that cost in advance, e.g. on a background thread while features are computed.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .config import PROJECTION_METHODS
from .errors import ProxyFDAError
from .paths import atomic_write_bytes, cache_dir
PROJECTION_VERSION = "v2"  # v2: neighbour graphs from proxyfda.knn, not UMAP's NN-descent
#: metrics whose neighbour graph `umap_neighbours` builds for UMAP
UMAP_METRICS = ("cosine", "euclidean")
#: UMAP's spectral start needs more points than the map's two dimensions + 1
MIN_POINTS = 4

_warm = threading.Event()
_warm_lock = threading.Lock()


def _umap(**kwargs):
    import umap  # imported lazily: costs seconds, and is not needed when maps come from the cache

    return umap.UMAP(**kwargs)


def _fit(x: np.ndarray, common: dict, init: np.ndarray | None = None) -> np.ndarray:
    """One UMAP map of ``x``, its neighbour graph given to UMAP from `umap_neighbours` (for the metrics
    that supports) instead of found by UMAP's own NN-descent: on 10k × 1280 points NN-descent took 206 s
    and the layout 54 s (two busy cores), our exact search 6 s."""
    import warnings

    options = dict(common, **({"init": init} if init is not None else {}))
    if common["metric"] in UMAP_METRICS:
        options["precomputed_knn"] = umap_neighbours(x, common["n_neighbors"], common["metric"])
    with warnings.catch_warnings():  # "transform will not work with a precomputed kNN": we never transform
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
        return _umap(**options).fit_transform(x)


def umap_neighbours(x: np.ndarray, n_neighbors: int, metric: str) -> tuple[np.ndarray, np.ndarray, None]:
    """UMAP's ``precomputed_knn``: each point itself (distance 0) and its ``n_neighbors`` − 1 nearest others
    by `proxyfda.knn` (exact up to `knn.EXACT_MAX_N` points, HNSW above), as cosine or euclidean distances."""
    from .knn import resolve_backend, search
    from .validation import check_features, unit_rows

    feats = check_features(x, "x")
    if metric == "cosine":
        feats = unit_rows(feats, "x", "drop the points whose features are all zero")
    graph = search(feats, n_neighbors - 1, "ip" if metric == "cosine" else "l2", resolve_backend("auto", len(feats)))
    distances = 1.0 - graph.similarities if metric == "cosine" else np.sqrt(-graph.similarities)
    own = np.arange(len(feats))[:, None]
    return (np.hstack([own, graph.indices]),
            np.hstack([np.zeros_like(own, dtype=np.float32), np.maximum(distances, 0.0)]).astype(np.float32), None)


def warm_up() -> None:
    """Compile UMAP's numba kernels once per process by fitting a tiny map (thread-safe, idempotent)."""
    with _warm_lock:
        if _warm.is_set():
            return
        points = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
        _umap(n_neighbors=10, random_state=0, n_epochs=20, n_jobs=1).fit_transform(points)
        _warm.set()


def is_warm() -> bool:
    return _warm.is_set()


def procrustes_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` moved onto ``target`` by the best translation, rotation/reflection and uniform scale."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(s.T @ t)
    rotation = u @ vt
    scale = sigma.sum() / max((s ** 2).sum(), 1e-12)
    return (s @ rotation) * scale + mu_t


def _cache_path(arrays: list[np.ndarray], params: dict) -> Path:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    digest.update(repr(sorted(params.items())).encode())
    return cache_dir() / "projections" / f"{digest.hexdigest()}.npz"


def neighbours_for(n_points: int, n_neighbors: int) -> int:
    """The UMAP neighbour count used for ``n_points`` points: ``n_neighbors``, lowered to n_points − 1 for
    a small image set (UMAP cannot look further than every other point), so a few images still get
    maps; fewer than `MIN_POINTS` are refused with a clear error."""
    if n_points < MIN_POINTS:
        raise ProxyFDAError(f"the 2D maps need at least {MIN_POINTS} images, got {n_points}; use more images "
                            "(the kNN drift scores do not need the maps)")
    return min(n_neighbors, n_points - 1)


def _checked_cache_path(x_a, x_b, method, n_neighbors, min_dist, metric, seed) -> tuple[Path, int]:
    """The cache file of a pair of maps and the neighbour count they are fitted with."""
    if method not in PROJECTION_METHODS:
        raise ProxyFDAError(f"unknown projection method '{method}'; use one of {', '.join(PROJECTION_METHODS)}")
    if len(x_a) != len(x_b):
        raise ProxyFDAError(f"both spaces need the same points: got {len(x_a)} and {len(x_b)} rows")
    n_neighbors = neighbours_for(len(x_a), n_neighbors)
    params = {"method": method, "n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "seed": seed,
              "version": PROJECTION_VERSION}
    return _cache_path([x_a, x_b], params), n_neighbors


def _read_pair(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as cached:
        return cached["a"], cached["b"]


def cached_pair(x_a: np.ndarray, x_b: np.ndarray, method: str = "init", n_neighbors: int = 15,
                min_dist: float = 0.1, metric: str = "cosine", seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The maps `project_pair` would return, if they are in the disk cache; None otherwise (never fits)."""
    path, _ = _checked_cache_path(x_a, x_b, method, n_neighbors, min_dist, metric, seed)
    return _read_pair(path) if path.exists() else None


def project_pair(x_a: np.ndarray, x_b: np.ndarray, method: str = "init", n_neighbors: int = 15,
                 min_dist: float = 0.1, metric: str = "cosine", seed: int = 0,
                 progress: Callable[[str], None] | None = None, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """2D maps [N, 2] of two feature arrays over the same N points, aligned to each other.

    Results are cached on disk by the arrays' content and the parameters. Fewer points than
    ``n_neighbors`` lower it (`neighbours_for`).
    """
    path, n_neighbors = _checked_cache_path(x_a, x_b, method, n_neighbors, min_dist, metric, seed)
    if use_cache and path.exists():
        return _read_pair(path)
    say = progress or (lambda message: None)
    if not is_warm():
        say("Compiling UMAP (numba) — about a minute, once per process")
        warm_up()
    common = {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "random_state": seed, "n_jobs": 1}
    if method == "aligned":
        import umap

        say("Fitting AlignedUMAP over both spaces")
        identity = {i: i for i in range(len(x_a))}
        options = {name: value for name, value in common.items() if name != "n_jobs"}  # AlignedUMAP has no n_jobs
        aligned = umap.AlignedUMAP(**options).fit([x_a, x_b], relations=[identity])
        map_a, map_b = aligned.embeddings_
    elif method == "init":
        map_a, map_b = _fit_chain([x_a, x_b], common, say, names=("the pre-trained features", "the fine-tuned features"))
    else:
        say("Fitting UMAP on the pre-trained features")
        map_a = _fit(x_a, common)
        say("Fitting UMAP on the fine-tuned features")
        map_b = _fit(x_b, common)
    map_a = np.asarray(map_a, dtype=np.float32)
    map_b = procrustes_align(np.asarray(map_b, dtype=np.float64), map_a.astype(np.float64)).astype(np.float32)
    if use_cache:
        atomic_write_bytes(path, lambda handle: np.savez(handle, a=map_a, b=map_b))
    return map_a, map_b


def _fit_chain(xs: list[np.ndarray], common: dict, say: Callable[[str], None],
               names: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """Map each space in turn, each fit starting from the previous map and Procrustes-aligned onto it."""
    maps: list[np.ndarray] = []
    for i, x in enumerate(xs):
        say(f"Fitting UMAP on {names[i]}" if names else f"Fitting UMAP {i + 1}/{len(xs)}")
        fitted = np.asarray(_fit(x, common, maps[-1] if maps else None), dtype=np.float64)
        maps.append(procrustes_align(fitted, maps[-1]) if maps else fitted)
    return [m.astype(np.float32) for m in maps]


def project_sequence(xs: list[np.ndarray], n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                     seed: int = 0, progress: Callable[[str], None] | None = None,
                     use_cache: bool = True) -> np.ndarray:
    """2D maps [S, N, 2] of S feature arrays over the same N points (e.g. a run's probe snapshots), each
    started from and aligned to the one before, so the frames can be played in order. Cached like
    `project_pair`."""
    if len(xs) < 1 or len({len(x) for x in xs}) != 1:
        raise ProxyFDAError(f"a sequence of maps needs feature arrays over the same points; got rows {[len(x) for x in xs]}")
    n_neighbors = neighbours_for(len(xs[0]), n_neighbors)
    params = {"method": "sequence", "n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "seed": seed,
              "version": PROJECTION_VERSION}
    path = _cache_path(list(xs), params)
    if use_cache and path.exists():
        with np.load(path) as cached:
            return cached["maps"]
    say = progress or (lambda message: None)
    if not is_warm():
        say("Compiling UMAP (numba) — about a minute, once per process")
        warm_up()
    common = {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "random_state": seed, "n_jobs": 1}
    maps = np.stack(_fit_chain(list(xs), common, say))
    if use_cache:
        atomic_write_bytes(path, lambda handle: np.savez(handle, maps=maps))
    return maps


def linear_map(x: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
    """2-D coordinates of the rows of ``x`` on the two principal axes of ``fit_on`` (default ``x``).

    Linear, so a convex combination of points lands inside their convex hull on the map: where UMAP
    would move a pooled point anywhere, this keeps "between its members" visible.
    """
    x = np.asarray(x, dtype=np.float64)
    basis = x if fit_on is None else np.asarray(fit_on, dtype=np.float64)
    if basis.ndim != 2 or len(basis) < 2 or x.ndim != 2 or x.shape[1] != basis.shape[1]:
        raise ProxyFDAError(f"a linear map needs [N, D] rows with N >= 2 and one D, got {x.shape} and {basis.shape}")
    mean = basis.mean(0)
    _, _, vt = np.linalg.svd(basis - mean, full_matrices=False)
    axes = vt[:2]
    if len(axes) < 2:
        axes = np.vstack([axes, np.zeros((2 - len(axes), x.shape[1]))])
    return ((x - mean) @ axes.T).astype(np.float32)
