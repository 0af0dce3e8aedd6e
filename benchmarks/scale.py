"""The drift pipeline at 10k, 30k and 100k points: wall time and peak memory of each stage.

For each N it prints, measured side by side in one process:

- kNN of one space per backend: exact torch blocks, exact FAISS flat (up to ``--flat-max``), approximate
  FAISS HNSW with its recall@k against exact search; each exact time also as a ratio to the GEMM floor
  (the blocked N×N similarity product alone, which any exact search must compute; timed on the first
  blocks and extrapolated to all N rows);
- `compute_drift` with the "auto" backend, stage by stage as its progress reports them (kNN graphs,
  recall, per-point drift, CKA/Procrustes/CKNNA, trustworthiness and continuity);
- both UMAP maps (`project_pair`, method "init"), up to ``--maps-max`` points.

Peak memory is the process's resident high-water mark during the stage (Linux: reset through
/proc/self/clear_refs before each stage), so it includes the two input arrays (at N=100k, d=1280:
1 GB of float32). The features are synthetic and clustered (``--classes`` Gaussian clusters; space B
is space A moved by a class-dependent shift plus noise, so neighbourhoods partly survive), since
embedding 100k real images takes hours on two cores; the costs depend on N, d and k, not on the pixels.

    python benchmarks/scale.py                       # N = 10k, 30k, 100k at d = 1280, k = 10
    python benchmarks/scale.py --sizes 3000 --d 256  # a quick look
    python benchmarks/scale.py --sizes 100000 --stages drift   # one stage
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxyfda.drift import compute_drift  # noqa: E402
from proxyfda.knn import default_block_size, measured_recall, search  # noqa: E402
from proxyfda.validation import unit_rows  # noqa: E402

#: blocks of the N×N product timed to extrapolate the GEMM floor
FLOOR_BLOCKS = 6


def clustered_pair(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two float32 spaces [n, d] over the same points and their labels, made one block at a time (no
    float64 temporaries): A = class centre + noise; B = A + a class-dependent shift + fresh noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    shifts = 0.6 * rng.standard_normal((classes, d), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    a, b = np.empty((n, d), np.float32), np.empty((n, d), np.float32)
    for start in range(0, n, 8192):
        rows = slice(start, start + 8192)
        lab = labels[rows]
        a[rows] = centres[lab] + 1.2 * rng.standard_normal((len(lab), d), dtype=np.float32)
        b[rows] = a[rows] + shifts[lab] + 0.8 * rng.standard_normal((len(lab), d), dtype=np.float32)
    return a, b, labels


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def measured(rows: list[dict], n: int, stage: str, **extra):
    """Time the block and record the resident high-water mark reached inside it."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    start = time.perf_counter()
    row = {"N": n, "stage": stage, **extra}
    yield row
    row["seconds"] = time.perf_counter() - start
    row["peak_GB"] = max(_status("VmHWM"), row.pop("earlier_peak", 0)) / 1e9
    rows.append(row)
    print(_line(row), flush=True)


def gemm_floor(unit: np.ndarray) -> float:
    """Seconds the blocked [N, N] similarity product alone takes (the torch backend's block size),
    extrapolated from its first `FLOOR_BLOCKS` blocks."""
    import torch

    n = len(unit)
    block = default_block_size(n)
    x = torch.from_numpy(unit)
    out = torch.empty(block, n)
    blocks = min(FLOOR_BLOCKS, -(-n // block))
    with torch.inference_mode():
        torch.mm(x[:block], x.T, out=out[: min(block, n)])  # warm
        start = time.perf_counter()
        for i in range(blocks):
            rows = x[i * block:(i + 1) * block]
            torch.mm(rows, x.T, out=out[: len(rows)])
        seconds = time.perf_counter() - start
    return seconds / (blocks * block) * n


def _line(row: dict) -> str:
    extra = "  ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in row.items() if key not in ("N", "stage", "seconds", "peak_GB"))
    return f"N={row['N']:>7,}  {row['stage']:<44} {row['seconds']:8.1f} s  peak {row['peak_GB']:5.2f} GB  {extra}"


def run_size(n: int, args: argparse.Namespace, rows: list[dict]) -> None:
    a, b, labels = clustered_pair(n, args.d, args.classes)
    if "knn" in args.stages:
        knn_stages(a, n, args, rows)
    if "drift" in args.stages:
        drift_stages(a, b, labels, n, args, rows)
    if "maps" in args.stages and n <= args.maps_max:
        from proxyfda.projection import project_pair, warm_up

        warm_up()
        with measured(rows, n, "maps: UMAP init, both spaces"):
            project_pair(a, b, use_cache=False)


def knn_stages(a: np.ndarray, n: int, args: argparse.Namespace, rows: list[dict]) -> None:
    """One space's kNN graph per backend, against the GEMM floor; HNSW's recall against the exact graph."""
    unit = unit_rows(a, "a", "")
    floor = gemm_floor(unit)
    print(f"N={n:,} d={args.d} k={args.k}: GEMM floor (blocked N×N product) {floor:.1f} s", flush=True)
    with measured(rows, n, "kNN torch (exact), one space") as row:
        exact = search(unit, args.k, "ip", "torch")
    row["x_floor"] = row["seconds"] / floor
    if n <= args.flat_max:
        with measured(rows, n, "kNN faiss flat (exact), one space") as row:
            search(unit, args.k, "ip", "faiss")
        row["x_floor"] = row["seconds"] / floor
    with measured(rows, n, "kNN faiss-hnsw (approximate), one space") as row:
        approx = search(unit, args.k, "ip", "faiss-hnsw")
    row["recall_at_k"] = measured_recall(unit, approx, "ip")
    row["recall_vs_full_exact"] = float((exact.indices[:, :, None] == approx.indices[:, None, :]).any(2).mean())


def drift_stages(a: np.ndarray, b: np.ndarray, labels: np.ndarray, n: int, args: argparse.Namespace,
                 rows: list[dict]) -> None:
    """`compute_drift` with the "auto" backend, and each of its stages as its progress names them."""
    class_names = [f"class {c}" for c in range(args.classes)]
    stages: list[tuple[str, float, int]] = []

    def heard(message: str, fraction: float) -> None:
        name = message.split(":")[0].split(" (")[0]
        if not stages or stages[-1][0] != name:
            stages.append((name, time.perf_counter(), _status("VmHWM")))
            Path("/proc/self/clear_refs").write_text("5")

    with measured(rows, n, "compute_drift (backend auto), all stages") as row:
        report = compute_drift(a, b, labels, class_names, args.k, progress=heard)
        heard("end", 1.0)
        row["earlier_peak"] = max(peak for _, _, peak in stages)
    row["backend"] = report.metrics["knn_backend"]
    row["overlap"] = report.metrics["overlap_at_k_mean"]
    for (name, start, _), (_, stop, peak) in zip(stages, stages[1:]):
        if name != "Done":
            print(f"N={n:>7,}    └ {name:<40} {stop - start:8.1f} s  peak {peak / 1e9:5.2f} GB", flush=True)
            rows.append({"N": n, "stage": f"  {name}", "seconds": stop - start, "peak_GB": peak / 1e9})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--flat-max", type=int, default=30_000, help="largest N timed with exact FAISS flat search")
    parser.add_argument("--maps-max", type=int, default=100_000, help="largest N whose UMAP maps are timed")
    parser.add_argument("--stages", nargs="+", choices=["knn", "drift", "maps"], default=["knn", "drift", "maps"])
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for n in args.sizes:
        run_size(n, args, rows)
    print("\n| N | stage | seconds | peak GB | notes |\n|---|---|---|---|---|")
    for row in rows:
        notes = ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in row.items() if key not in ("N", "stage", "seconds", "peak_GB"))
        print(f"| {row['N']:,} | {row['stage']} | {row['seconds']:.1f} | {row['peak_GB']:.2f} | {notes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
