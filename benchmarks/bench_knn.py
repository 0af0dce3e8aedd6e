"""Time `knn_graph` on every available backend against one plain BLAS product of the same shape.

The floor is torch.mm(x, x.T) for x [N, d]: an exact kNN graph must compute at least that. The
target is the "auto" backend at ≤ 1.2× the floor for N=50k, d=512, k=10. Also checks that all
backends return the same similarities (to 1e-4).

    python benchmarks/bench_knn.py --n 50000 --d 512 --k 10 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxyfda.knn import KnnGraph, available_backends, knn_graph, resolve_backend  # noqa: E402

AGREEMENT_TOL = 1e-4


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def blas_floor(x: torch.Tensor) -> None:
    """One [N, d] × [d, N] product, dropped at once (only its time matters)."""
    with torch.inference_mode():
        torch.mm(x, x.T)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metric", default="cosine", choices=["cosine", "ip", "l2"])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(args.n, args.d)
    backends = ["auto", *available_backends()]
    print(f"N={args.n} d={args.d} k={args.k} metric={args.metric} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} cuda={torch.cuda.is_available()} "
          f"auto -> {resolve_backend('auto', args.n)}", flush=True)

    floor, _ = median_seconds(lambda: blas_floor(x), args.repeats)
    rows = [("torch.mm floor", floor)]
    graphs: dict[str, KnnGraph] = {}
    for backend in backends:
        seconds, graphs[backend] = median_seconds(
            lambda: knn_graph(x, args.k, metric=args.metric, backend=backend), args.repeats)
        rows.append((backend, seconds))
        print(f"  done: {backend} {seconds:.2f} s", flush=True)

    print(f"\n{'backend':<16}{'median s':>10}{'x floor':>10}")
    for name, seconds in rows:
        print(f"{name:<16}{seconds:>10.2f}{seconds / floor:>10.2f}")
    return 0 if backends_agree(graphs) else 1


def backends_agree(graphs: dict[str, KnnGraph]) -> bool:
    """Every backend's similarities equal the first one's to AGREEMENT_TOL (indices may differ at ties)."""
    names = list(graphs)
    reference = graphs[names[0]].similarities
    ok = True
    for name in names[1:]:
        gap = float(np.abs(graphs[name].similarities - reference).max())
        agrees = gap <= AGREEMENT_TOL
        ok &= agrees
        print(f"similarities {name} vs {names[0]}: max |diff| = {gap:.2e} {'ok' if agrees else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
