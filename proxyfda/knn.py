"""k-nearest-neighbour graphs of a feature matrix: exact on torch (CPU or CUDA) or FAISS, approximate
with FAISS HNSW for large N.

Every backend returns the same thing: for each point its k most similar *other* points, sorted by
decreasing similarity. "Larger is closer" holds for every metric, so for "l2" the similarities are
negative squared euclidean distances. An approximate graph's quality is measured, never assumed:
`measured_recall` compares it with exact search on a sample of points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .config import KNN_BACKENDS as BACKENDS
from .errors import ProxyFDAError
from .validation import check_block_size, check_choice, check_features, check_k, unit_rows

if TYPE_CHECKING:
    import torch

METRICS = ("cosine", "ip", "l2")

#: elements in one block of the [block, N] similarity matrix (float32: 256 MB; 1342 rows at N=50k).
#: Measured on 2 CPU cores at N=50k, d=512: blocks of 1k-4k rows run the matmul at full speed, 512
#: rows took twice as long.
_BLOCK_ELEMENTS = 1 << 26
#: columns per group in the top-k prefilter of `_block_topk` (measured: 32-64 fastest)
_GROUP = 64
#: the prefilter pays off once a row has many more groups than k (measured: 3x faster top-k at N=50k,
#: k=10; no gain at N=10k)
_PREFILTER_MIN_GROUPS_PER_K = 32

#: backends whose graphs may miss true neighbours (their recall is measured whenever they are used)
APPROXIMATE = ("faiss-hnsw",)
#: "auto" stays exact up to this many points and switches to HNSW above (announced with its recall). On 2
#: CPU cores exact search costs O(N² d): 18 s per space at N=50k, d=512, about 4 minutes at N=100k, d=1280;
#: HNSW builds and searches 100k × 512 in about 30 s at recall@10 0.97 (benchmarks/scale.py).
EXACT_MAX_N = 50_000
#: HNSW graph degree, build and search breadth (FAISS's defaults are 32 / 40 / 16; 16 lost recall at k=10)
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
#: points whose exact neighbours `measured_recall` compares the approximate graph with
RECALL_SAMPLE = 1000


class KnnGraph(NamedTuple):
    """indices [N, k] int64 of each point's neighbours (itself excluded) and their similarities [N, k]
    float32, both sorted by decreasing similarity (for metric "l2": minus the squared distance)."""

    indices: np.ndarray
    similarities: np.ndarray


def knn_graph(x: Any, k: int, metric: str = "cosine", backend: str = "auto",
              block_size: int | None = None) -> KnnGraph:
    """Exact kNN graph of the rows of `x` ([N, d] numpy array or torch tensor, any float dtype).

    metric: "cosine" (rows L2-normalised first), "ip" (inner product) or "l2" (similarities are
    NEGATIVE squared euclidean distances, so larger is always closer). A point is never its own
    neighbour, even when other points duplicate it. block_size (torch backend only): rows per block,
    which bounds memory to about block_size × N floats; default keeps that near 256 MB.
    """
    check_choice(metric, METRICS, "metric")
    check_choice(backend, BACKENDS, "kNN backend")
    feats = check_features(x, "x")
    n = feats.shape[0]
    k = check_k(k, n)
    if metric == "cosine":
        feats, metric = unit_rows(feats, "x", "drop those points, or use metric='l2' or 'ip'"), "ip"
    block_size = check_block_size(block_size, default_block_size(n))
    return search(feats, k, metric, resolve_backend(backend, n), block_size)


def search(feats: np.ndarray, k: int, metric: str, backend: str, block_size: int | None = None) -> KnnGraph:
    """The search behind `knn_graph`, for callers that have checked its inputs once already:
    ``feats`` float32, C-contiguous and finite (unit rows for a cosine graph, searched with "ip"),
    1 ≤ k < N, ``metric`` "ip" or "l2", ``backend`` a concrete one (`resolve_backend`)."""
    if backend == "torch":
        return _torch_knn(feats, k, metric, block_size or default_block_size(len(feats)))
    if backend == "faiss-hnsw":
        return _faiss_hnsw_knn(feats, k, metric, block_size)
    return _faiss_knn(feats, k, metric, gpu=backend == "faiss-gpu")


def resolve_backend(backend: str, n: int) -> str:
    """The concrete backend "auto" (or an explicit choice) runs on, so callers can report it.

    auto: FAISS on GPU when a GPU and FAISS GPU support exist (exact at any N); else exact torch (on
    CUDA if available, else CPU, where torch's blocked matmul measured faster than faiss-cpu flat
    search) up to `EXACT_MAX_N` points, and approximate FAISS HNSW above it. Callers announce an
    approximate backend with its `measured_recall`.
    """
    check_choice(backend, BACKENDS, "kNN backend")
    if backend == "auto":
        if _faiss_gpu_available():
            return "faiss-gpu"
        return "faiss-hnsw" if n > EXACT_MAX_N and _faiss() is not None else "torch"
    if backend in ("faiss", "faiss-hnsw") and _faiss() is None:
        raise ProxyFDAError(f"kNN backend {backend!r} needs the faiss package: pip install faiss-cpu, "
                            "or use backend='torch'")
    if backend == "faiss-gpu" and not _faiss_gpu_available():
        raise ProxyFDAError("kNN backend 'faiss-gpu' needs a visible GPU and a FAISS build with GPU support "
                            "(pip install faiss-gpu-cu12); use backend='auto' or 'torch'")
    return backend


def available_backends(approximate: bool = False) -> list[str]:
    """Concrete backends usable on this machine ("auto" is always accepted as well): the exact ones,
    and with ``approximate`` also those in `APPROXIMATE`."""
    names = ["torch"]
    if _faiss() is not None:
        names.append("faiss")
    if _faiss_gpu_available():
        names.append("faiss-gpu")
    if approximate and _faiss() is not None:
        names.extend(APPROXIMATE)
    return names


def measured_recall(feats: np.ndarray, graph: KnnGraph, metric: str, sample: int = RECALL_SAMPLE,
                    seed: int = 0) -> float:
    """recall@k of ``graph`` (from `search` on ``feats``): on ``sample`` points drawn with ``seed``, the
    share of their exact k nearest neighbours that the graph also lists. 1.0 for an exact backend up to
    ties. Costs ``sample`` × N × d: one exact block of queries (1.4 s at N=100k, d=512 on 2 cores)."""
    return float(point_recalls(feats, graph, metric, sample, seed).mean())


def point_recalls(feats: np.ndarray, graph: KnnGraph, metric: str, sample: int = RECALL_SAMPLE,
                  seed: int = 0) -> np.ndarray:
    """Per sampled point, the share of its exact k nearest neighbours ``graph`` lists (see `measured_recall`);
    their spread gives the estimate's uncertainty (per-point recall varies: sd 0.24 on 25k clustered points)."""
    n, k = graph.indices.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    exact = _torch_knn(feats, k, metric, default_block_size(n), rows=rows).indices
    found = graph.indices[rows]
    return (exact[:, :, None] == found[:, None, :]).any(axis=2).mean(axis=1)


def default_block_size(n: int) -> int:
    """Rows per block for the torch backend: about `_BLOCK_ELEMENTS` similarities in flight."""
    return int(min(n, max(1, _BLOCK_ELEMENTS // n)))


def _torch_knn(x: np.ndarray, k: int, metric: str, block_size: int, rows: np.ndarray | None = None) -> KnnGraph:
    """Blocked similarity matmul + top-k; self-matches are masked with -inf before the top-k. ``rows``
    (sorted point ids) searches only those points' neighbours, among all points; default: every point."""
    import torch  # here, not at the top: a page served from the caches never needs torch

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    n = x.shape[0]
    queries = torch.arange(n) if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
    m = len(queries)
    with torch.inference_mode():
        xt = torch.from_numpy(x).to(device)
        queries = queries.to(device)
        sq_norms = (xt * xt).sum(dim=1) if metric == "l2" else None
        block = torch.empty(min(block_size, m), n, dtype=torch.float32, device=device)  # reused: no page faults
        indices = torch.empty(m, k, dtype=torch.int64, device=device)
        sims = torch.empty(m, k, dtype=torch.float32, device=device)
        for start in range(0, m, block_size):
            stop = min(start + block_size, m)
            own = queries[start:stop]
            scores = _block_scores(xt, own, sq_norms, block[: stop - start])
            scores[torch.arange(stop - start, device=device), own] = -torch.inf
            sims[start:stop], indices[start:stop] = _block_topk(scores, k)
        if sq_norms is not None:
            # the block held 2<x_i,x_j> - |x_j|^2; subtract |x_i|^2 to get -|x_i - x_j|^2
            sims.sub_(sq_norms[queries][:, None]).clamp_(max=0.0)
        return KnnGraph(indices.cpu().numpy(), sims.cpu().numpy())


def _block_scores(xt: torch.Tensor, own: torch.Tensor, sq_norms: torch.Tensor | None,
                  out: torch.Tensor) -> torch.Tensor:
    """Similarities of rows ``own`` to all rows, written into `out` (rank-equivalent for "l2")."""
    import torch

    rows = xt[own[0]:own[-1] + 1] if len(own) == int(own[-1] - own[0]) + 1 else xt[own]  # a slice: no copy
    if sq_norms is None:
        return torch.mm(rows, xt.T, out=out)
    return torch.addmm(sq_norms[None, :], rows, xt.T, beta=-1.0, alpha=2.0, out=out)


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, column indices) of each row of `scores` [b, N], sorted by decreasing value.

    For large N a full top-k over every row is the main cost after the matmul, so first keep only the
    k groups of `_GROUP` columns with the largest maxima: they hold all top-k values (exact; with ties
    an equal value may come from another column), and a max per group is a cheap pass over memory.
    """
    import torch

    b, n = scores.shape
    if n < _PREFILTER_MIN_GROUPS_PER_K * k * _GROUP:
        return torch.topk(scores, k, dim=1)
    main = n - n % _GROUP
    group_max = scores[:, :main].view(b, main // _GROUP, _GROUP).amax(dim=2)
    best = torch.topk(group_max, k, dim=1, sorted=False).indices
    offsets = torch.arange(_GROUP, device=scores.device)
    tail = torch.arange(main, n, device=scores.device).expand(b, n - main)  # leftover columns: always candidates
    candidates = torch.cat([(best[:, :, None] * _GROUP + offsets).reshape(b, -1), tail], dim=1)
    values, picked = torch.topk(scores.gather(1, candidates), k, dim=1)
    return values, candidates.gather(1, picked)


def _faiss_knn(x: np.ndarray, k: int, metric: str, gpu: bool) -> KnnGraph:
    """FAISS flat (exact) search for k+1 neighbours, then each row's own index removed."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(x.shape[1]) if metric == "l2" else faiss.IndexFlatIP(x.shape[1])
    if gpu:
        if faiss.get_num_gpus() > 1:  # several GPUs: each holds 1/G of the points; results merged, still exact
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            index = faiss.index_cpu_to_all_gpus(index, co=options)
        else:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    sims, indices = index.search(x, k + 1)
    if metric == "l2":
        sims = -sims
    indices, sims = _drop_self(indices.astype(np.int64), sims.astype(np.float32), k)
    return KnnGraph(indices, sims)


def _faiss_hnsw_knn(x: np.ndarray, k: int, metric: str, block_size: int | None) -> KnnGraph:
    """Approximate search with a FAISS HNSW graph (`HNSW_M` links per point), k+1 results per point with
    its own index removed. Points for which HNSW returned fewer than k+1 (its -1 padding) are searched
    exactly instead, so every row holds k real neighbours."""
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * (k + 1))
    sims, indices = index.search(x, k + 1)
    if metric == "l2":
        sims = -sims
    short = np.flatnonzero((indices < 0).any(axis=1))
    indices, sims = indices.astype(np.int64), sims.astype(np.float32)
    if len(short):
        exact = _torch_knn(x, k + 1, metric, block_size or default_block_size(len(x)), rows=short)
        indices[short], sims[short] = exact.indices, exact.similarities
    indices, sims = _drop_self(indices, sims, k)
    return KnnGraph(indices, sims)


def _drop_self(indices: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per row keep k: drop the row's own index if present, else the last column.

    Searching k+1 and dropping the first column is wrong with duplicate points: a duplicate may
    come first, or the point itself may not be returned at all.
    """
    keep = indices != np.arange(len(indices))[:, None]
    without_self = keep.all(axis=1)
    keep[without_self, -1] = False
    return indices[keep].reshape(-1, k), sims[keep].reshape(-1, k)


def _faiss() -> Any:
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpu_available() -> bool:
    faiss = _faiss()
    return (faiss is not None and hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0)
