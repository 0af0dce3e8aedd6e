"""Neighbourhood drift between two feature spaces over the same images.

One route from a `DriftConfig` to a report, used by the app, ``proxyfda prepare`` and ``proxyfda
drift``: `load_drift_images` (the config's image set), `drift_features` (both encoders' features,
disk-cached, with progress), `compute_drift` (graphs, per-point drift and global metrics; k and the
kNN backend are checked here, once). `run_drift` chains the three; `DriftReport.save` writes
``metrics.json``, ``points.parquet``, ``classes.csv`` and ``config.json``.

The ``default-finetuned`` spec must have been built first (`proxyfda.default.ensure_default_for`,
which the CLI and the app call): this module only reads encoders.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from . import metrics as M
from .config import DriftConfig
from .data import ImageSet, load_images
from .errors import ProxyFDAError
from .knn import APPROXIMATE, EXACT_MAX_N, RECALL_SAMPLE, KnnGraph, point_recalls, resolve_backend, search
from .paths import atomic_write_bytes, cache_dir
from .validation import check_k, nonzero_norms, unit_rows

if TYPE_CHECKING:
    from .backbones import Encoder

#: bump when what `compute_drift` computes changes: reports cached by older code are then not read
REPORT_VERSION = "drift-v3"

#: resampled indices drawn at once by `bootstrap_interval` (32 MB of int64)
_BOOTSTRAP_ELEMENTS = 1 << 22
#: progress(stage message, fraction done in [0, 1])
StageProgress = Callable[[str, float], None]
#: make_encoder(spec, image_size or None) -> Encoder; the app passes a cached one
EncoderFactory = Callable[[str, "int | None"], "Encoder"]


@dataclass
class DriftReport:
    """Per-point and global drift of one image set between space A (pre-trained) and B (fine-tuned)."""

    k: int
    labels: np.ndarray
    class_names: list[str]
    graph_a: KnnGraph
    graph_b: KnnGraph
    overlap: np.ndarray  # overlap@k per point: |N_a ∩ N_b| / k
    jaccard: np.ndarray
    order: np.ndarray  # order agreement per point: LCS of the two ranked neighbour lists / k
    l2_drift: np.ndarray  # per-point distance between the L2-normalised features; NaN when the widths differ
    # global scores, and under "omitted" each score left out of this report with the reason
    metrics: dict[str, float | int | str | dict[str, str]]
    class_table: pd.DataFrame
    config: DriftConfig | None = None
    _drift_order: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.labels)

    def points_frame(self) -> pd.DataFrame:
        """One row per point: class, drift scores and both neighbour lists (row ids)."""
        return pd.DataFrame({
            "id": np.arange(self.n),
            "label": self.labels,
            "class": [self.class_names[int(c)] for c in self.labels],
            "overlap_at_k": self.overlap,
            "jaccard": self.jaccard,
            "order_agreement": self.order,
            "l2_drift": self.l2_drift,
            "neighbours_pretrained": list(self.graph_a.indices),
            "neighbours_finetuned": list(self.graph_b.indices),
        })

    def most_drifted(self, top: int = 20, start: int = 0) -> pd.DataFrame:
        """The points whose neighbourhoods changed most: lowest overlap@k, then largest L2 drift (NaN last),
        then id; rows ``start`` to ``start + top`` of that order, so a long list can be paged. Only those
        rows are built (sorting 100k points takes 10 ms)."""
        order = self.drift_order()[start:start + top]
        return pd.DataFrame({
            "id": order, "label": self.labels[order], "class": [self.class_names[int(c)] for c in self.labels[order]],
            "overlap_at_k": self.overlap[order], "jaccard": self.jaccard[order],
            "order_agreement": self.order[order], "l2_drift": self.l2_drift[order],
        }, index=order)

    def drift_order(self) -> np.ndarray:
        """All point ids, most drifted first (the order of `most_drifted`)."""
        if self._drift_order is None:
            l2 = np.nan_to_num(self.l2_drift, nan=-np.inf)
            self._drift_order = np.lexsort((np.arange(self.n), -l2, self.overlap))
        return self._drift_order

    def neighbours(self, i: int) -> dict[str, np.ndarray]:
        """Point i's neighbours split into kept (in both), lost (pre-trained only), gained (fine-tuned only)."""
        kept, lost, gained = M.neighbour_sets(self.graph_a.indices[i], self.graph_b.indices[i])
        return {"kept": kept, "lost": lost, "gained": gained}

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n")
        self.points_frame().to_parquet(out / "points.parquet", index=False)
        self.class_table.to_csv(out / "classes.csv", index=False)
        if self.config is not None:
            self.config.save(out / "config.json")
        return out


def compute_drift(x_a: np.ndarray, x_b: np.ndarray, labels: np.ndarray, class_names: list[str], k: int,
                  backend: str = "auto", config: DriftConfig | None = None,
                  progress: StageProgress | None = None) -> DriftReport:
    """kNN graphs of both spaces (cosine), per-point drift and the global preservation metrics.

    Everything is checked here, once: both feature arrays (finite, one row per label, no all-zero
    row), k against the number of points, the backend (resolved to a concrete one). The graphs and
    rank scores below then run on the checked unit rows without checking again.

    Memory stays O(N·d): no N×N matrix (ranks and kNN go in row blocks, CKA and Procrustes through d×d
    Gram matrices) and, beyond the inputs, one space's unit rows at a time, float32 for large spaces
    (`proxyfda.metrics.rank_dtype`). An approximate kNN backend (`proxyfda.knn.APPROXIMATE`, which
    "auto" picks above `knn.EXACT_MAX_N` points) is announced in ``metrics["knn_note"]`` with the
    recall@k of each graph measured against exact search (``knn_recall_a``, ``knn_recall_b``).
    ``progress(message, fraction)`` hears of each stage.

    Spaces of different widths (e.g. a 512-d and a 1280-d encoder) get every score but the per-point
    L2 drift, which compares a point's two vectors coordinate by coordinate: it is NaN per point and
    left out of the metrics. Each score left out is named in ``metrics["omitted"]`` with the reason.
    """
    say = progress or (lambda message, fraction: None)
    fix = "drop the images whose features are all zero"
    a, b = M.paired(x_a, x_b, "x_a", "x_b")  # float32 features stay float32: no copy of either space
    n = len(a)
    if len(labels) != n:
        raise ProxyFDAError(f"there are {len(labels)} labels for {n} feature rows: give one label per image")
    k = check_k(k, n)
    backend = resolve_backend(backend, n)
    norms_a, norms_b = nonzero_norms(a, "x_a", fix), nonzero_norms(b, "x_b", fix)  # refused before any search
    work = M.rank_dtype(n, max(a.shape[1], b.shape[1]))  # float64 while small: bit-for-bit sklearn's ranks

    def unit(x: np.ndarray, name: str, norms: np.ndarray) -> np.ndarray:
        """One space's unit rows. Only one space's are held at a time (512 MB at 100k × 1280): space A's are
        made twice, which costs a second, rather than both kept through the rank passes."""
        return np.ascontiguousarray(unit_rows(x, name, fix, norms), dtype=work)

    omitted = omitted_scores(n, k, a.shape[1], b.shape[1])
    ranks = "trustworthiness" not in omitted
    metrics: dict[str, float | int | str | dict[str, str]] = {"n": n, "k": k, "knn_backend": backend}
    recall = []

    def search_space(unit_x: np.ndarray, name: str, at: float) -> KnnGraph:
        say(f"kNN graph of the {name} space ({n:,} points, {backend})", at)
        feats = np.ascontiguousarray(unit_x, dtype=np.float32)  # a copy only while the work is float64 (small N)
        graph = search(feats, k, "ip", backend)
        if backend in APPROXIMATE:
            say(f"Measuring the approximate {name} graph's recall@{k} on {min(n, RECALL_SAMPLE):,} points", at + 0.08)
            recall.append(point_recalls(feats, graph, "ip"))
        return graph

    def ranking(what: str, start: float) -> Callable[[int], None]:
        return lambda done: say(f"{what}: ranked {done:,} of {n:,} rows", start + 0.35 * done / n)

    graph_a = search_space(unit(a, "x_a", norms_a), "pre-trained", 0.02)  # A's unit rows are freed on return
    unit_b = unit(b, "x_b", norms_b)
    graph_b = search_space(unit_b, "fine-tuned", 0.12)
    if ranks:  # continuity: the pre-trained neighbourhoods, ranked in the fine-tuned space
        metrics["continuity"] = M.rank_score(unit_b, graph_a.indices, ranking("Continuity", 0.22))
    del unit_b
    if recall:
        metrics.update(_recall_note(recall, n, k, backend))
    say("Per-point drift", 0.58)
    overlap = M.knn_overlap(graph_a.indices, graph_b.indices)
    jaccard = M.jaccard(graph_a.indices, graph_b.indices)
    order = M.order_agreement(graph_a.indices, graph_b.indices)
    l2 = np.full(n, np.nan) if "mean_l2_drift" in omitted else M.unit_distances(a, b)
    say("Global geometry: linear CKA, Procrustes, CKNNA", 0.6)
    geometry = M.Geometry(a, b)
    metrics.update({
        "overlap_at_k_mean": float(overlap.mean()),
        "overlap_at_k_random_baseline": M.overlap_random_baseline(k, n),
        "jaccard_mean": float(jaccard.mean()),
        "order_agreement_mean": float(order.mean()),
        "linear_cka": geometry.linear_cka(),
        "procrustes_disparity": geometry.procrustes_disparity(),
    })
    if "mean_l2_drift" not in omitted:
        metrics["mean_l2_drift"] = float(l2.mean())
    if "cknna" not in omitted:
        metrics["cknna"] = M.cknna(None, None, k, graphs=(graph_a, graph_b))
    if ranks:  # trustworthiness: the fine-tuned neighbourhoods, ranked in the pre-trained space
        metrics["trustworthiness"] = M.rank_score(unit(a, "x_a", norms_a), graph_b.indices,
                                                  ranking("Trustworthiness", 0.65))
    if omitted:
        metrics["omitted"] = omitted
    class_table = M.class_drift(graph_a.indices, graph_b.indices, labels, class_names)
    say("Done", 1.0)
    return DriftReport(k=k, labels=labels, class_names=class_names, graph_a=graph_a, graph_b=graph_b,
                       overlap=overlap, jaccard=jaccard, order=order, l2_drift=l2, metrics=metrics, class_table=class_table,
                       config=config)


def _recall_note(recall: list[np.ndarray], n: int, k: int, backend: str) -> dict[str, float | str]:
    """recall@k of both approximate graphs (from their sampled points' recalls), and the sentence that
    announces them with a 95 % interval for each."""
    why = (f"N = {n:,} > {EXACT_MAX_N:,}, where exact search stops being practical"
           if n > EXACT_MAX_N else "it was chosen")
    means = [float(r.mean()) for r in recall]
    margins = [1.96 * float(r.std(ddof=1)) / np.sqrt(len(r)) if len(r) > 1 else 0.0 for r in recall]
    note = (f"The kNN graphs are approximate ({backend}) because {why}: recall@{k} against exact search "
            f"is {means[0]:.3f} ± {margins[0]:.3f} (pre-trained) and {means[1]:.3f} ± {margins[1]:.3f} "
            f"(fine-tuned), measured on {len(recall[0]):,} random points (95 % intervals). Choose the 'torch' "
            "backend for exact graphs.")
    return {"knn_recall_a": means[0], "knn_recall_b": means[1], "knn_note": note}


def omitted_scores(n: int, k: int, width_a: int, width_b: int) -> dict[str, str]:
    """The global scores a report of ``n`` points, ``k`` neighbours and these feature widths cannot
    have, each with the reason in a sentence (shown by the CLI and the Drift Explorer)."""
    omitted = {}
    if width_a != width_b:
        omitted["mean_l2_drift"] = (f"L2 drift compares a point's two feature vectors coordinate by coordinate, "
                                    f"which needs the same width in both spaces (pre-trained {width_a}, "
                                    f"fine-tuned {width_b})")
    if n < 4:
        omitted["cknna"] = f"CKNNA's unbiased estimate needs at least 4 points (N={n})"
    if k >= n / 2:
        why = (f"needs k < N/2 (k={k}, N={n}), where its normalisation by the worst possible score holds; "
               f"use k ≤ {(n - 1) // 2} to get it")
        omitted["trustworthiness"] = f"trustworthiness {why}"
        omitted["continuity"] = f"continuity {why}"
    return omitted


# ---------------------------------------------------------------------------------------------
# calibration: is a score a real change, or what unrelated spaces would also give?

#: the scores `calibrate` puts next to a permutation null; per-point means also get a bootstrap interval
CALIBRATED = ("overlap_at_k_mean", "jaccard_mean", "order_agreement_mean", "cknna", "linear_cka", "mean_l2_drift")
_PER_POINT = {"overlap_at_k_mean": "overlap", "jaccard_mean": "jaccard", "order_agreement_mean": "order",
              "mean_l2_drift": "l2_drift"}


def permuted_scores(report: DriftReport, x_a: np.ndarray, x_b: np.ndarray, permutation: np.ndarray,
                    geometry: M.Geometry | None = None) -> dict[str, float]:
    """The calibrated scores when image i of space A is paired with image ``permutation[i]`` of space B.

    No new kNN search: B's graph is relabelled (the neighbours of permutation[i], renamed by the
    inverse permutation), which is exactly the graph of the permuted rows. ``geometry`` (the
    `proxyfda.metrics.Geometry` of x_a and x_b, which `calibrate` builds once) saves recomputing each
    space's own Gram matrix.
    """
    n, k = report.n, report.k
    inverse = np.empty(n, dtype=np.int64)
    inverse[permutation] = np.arange(n)
    idx_b = inverse[report.graph_b.indices[permutation]]
    graph_b = KnnGraph(idx_b, report.graph_b.similarities[permutation])
    scores = {
        "overlap_at_k_mean": float(M.knn_overlap(report.graph_a.indices, idx_b).mean()),
        "jaccard_mean": float(M.jaccard(report.graph_a.indices, idx_b).mean()),
        "order_agreement_mean": float(M.order_agreement(report.graph_a.indices, idx_b).mean()),
        "linear_cka": (geometry or M.Geometry(*M.paired(x_a, x_b))).permuted_cka(permutation),
    }
    if "mean_l2_drift" in report.metrics:
        scores["mean_l2_drift"] = float(M.unit_distances(np.asarray(x_a), np.asarray(x_b), permutation).mean())
    if "cknna" in report.metrics:
        scores["cknna"] = M.cknna(None, None, k, graphs=(report.graph_a, graph_b))
    return scores


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-point ``values`` (points resampled with
    replacement ``resamples`` times, indices drawn as ``rng.integers(0, n, (resamples, n))``)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(values)
    chunk = max(1, _BOOTSTRAP_ELEMENTS // n)  # the same draws as one [resamples, n] array, without its 800 MB at 100k
    means = np.concatenate([values[rng.integers(0, n, size=(min(chunk, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


#: random re-pairings of the images behind each score's null, unless a caller asks for another number
NULL_PERMUTATIONS = 20


def calibrate(report: DriftReport, x_a: np.ndarray, x_b: np.ndarray, permutations: int = NULL_PERMUTATIONS,
              resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each global score next to what it is when the pairing of images is broken (``permutations``
    random re-pairings of B's rows: the null of "unrelated spaces of the same shape") and, for the
    per-point means, a 95 % bootstrap interval over images. Raw scores rise with dimension and k
    alone; a score near its null says nothing was preserved."""
    rng = np.random.default_rng(seed)
    geometry = M.Geometry(*M.paired(x_a, x_b))
    null = [permuted_scores(report, x_a, x_b, rng.permutation(report.n), geometry) for _ in range(permutations)]
    rows = []
    for name in CALIBRATED:
        if name not in report.metrics:
            continue
        samples = np.array([scores[name] for scores in null])
        low, high = (bootstrap_interval(getattr(report, _PER_POINT[name]), resamples, seed)
                     if name in _PER_POINT else (np.nan, np.nan))
        rows.append({"score": name, "value": float(report.metrics[name]), "null_mean": float(samples.mean()),
                     "null_sd": float(samples.std()), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def cached_drift(x_a: np.ndarray, x_b: np.ndarray, labels: np.ndarray, class_names: list[str], k: int,
                 backend: str = "auto", config: DriftConfig | None = None, root: Path | None = None,
                 progress: StageProgress | None = None) -> DriftReport:
    """`compute_drift`, served from the disk cache when the same features, labels, k and backend were
    compared before (keyed by their content; a page served this way needs no kNN search, nor torch)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (REPORT_VERSION, str(k), backend, json.dumps(list(class_names))):
        digest.update(part.encode() + b"\0")
    for array in (x_a, x_b, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    path = (root or cache_dir()) / "reports" / f"{digest.hexdigest()}.npz"
    if path.exists():
        return _read_report(path, labels, class_names, config)
    report = compute_drift(x_a, x_b, labels, class_names, k, backend=backend, config=config, progress=progress)
    atomic_write_bytes(path, lambda handle: _write_report(report, handle))
    return report


def _write_report(report: DriftReport, handle) -> None:
    np.savez(handle, idx_a=report.graph_a.indices, sims_a=report.graph_a.similarities, idx_b=report.graph_b.indices,
             sims_b=report.graph_b.similarities, overlap=report.overlap, jaccard=report.jaccard, order=report.order,
             l2_drift=report.l2_drift, metrics=np.array(json.dumps(report.metrics)),
             class_table=np.frombuffer(report.class_table.to_parquet(), dtype=np.uint8))


def _read_report(path: Path, labels: np.ndarray, class_names: list[str], config: DriftConfig | None) -> DriftReport:
    with np.load(path) as data:
        metrics = json.loads(str(data["metrics"]))
        class_table = pd.read_parquet(io.BytesIO(data["class_table"].tobytes()))
        return DriftReport(k=int(metrics["k"]), labels=labels, class_names=list(class_names),
                           graph_a=KnnGraph(data["idx_a"], data["sims_a"]), graph_b=KnnGraph(data["idx_b"], data["sims_b"]),
                           overlap=data["overlap"], jaccard=data["jaccard"], order=data["order"],
                           l2_drift=data["l2_drift"], metrics=metrics,
                           class_table=class_table, config=config)


def load_drift_images(config: DriftConfig) -> ImageSet:
    """The image set a drift config compares (a class-balanced sample of ``config.n`` images).

    ``config.k`` is checked against the number of images here, before any encoder runs, so a k too
    large for the data fails at once with the largest usable k. The labels come from ``config.labels``
    when it names a file; embedding files (``vectors:`` specs) are checked to hold as many rows first.
    """
    check_embedding_files(config)
    images = load_images(config.data, n=config.n or None, seed=config.seed, labels=config.labels)
    try:
        check_k(config.k, len(images))
    except ProxyFDAError as exc:
        raise ProxyFDAError(f"{config.data} gave {len(images)} images (n={config.n or 'all'}): {exc}") from None
    return images


def check_embedding_files(config: DriftConfig) -> None:
    """The embedding files among the config's encoders (``vectors:`` specs) must hold the same number of
    rows; the error names two that differ. (Each against the images: `proxyfda.encoders.precomputed_features`.)"""
    from .encoders import vectors_source
    from .vectors import check_same_rows

    specs = filter(None, (config.pretrained, config.finetuned, config.compare))
    check_same_rows([source for source in map(vectors_source, specs) if source])


def encoder_features(spec: str, images: ImageSet, image_size: int | None,
                     progress: Callable[[int, int], None] | None = None,
                     make_encoder: EncoderFactory | None = None) -> np.ndarray:
    """Features of ``images`` under the encoder ``spec`` on the fastest device, disk-cached.

    Features cached for the same spec, weight files and images are found without building the
    encoder (nor importing torch): see `proxyfda.encoders.spec_fingerprint`. A ``vectors:`` spec's
    features are read from its file (`proxyfda.encoders.precomputed_features`): no encoder at all.
    """
    from .encoders import precomputed_features, spec_fingerprint, spec_run
    from .features import extract_features, features_from_source, remember_source

    precomputed = precomputed_features(spec, images)
    if precomputed is not None:
        if progress:
            progress(len(images), len(images))
        return precomputed
    source = spec_fingerprint(spec, image_size or None)
    cached = features_from_source(source, images)
    if cached is not None:
        run = spec_run(spec)
        if run is not None:  # built, a run's encoder warns when the run did not complete; from the cache too
            run.warn_if_incomplete()
        if progress:
            progress(len(images), len(images))
        return cached
    encoder = (make_encoder or _default_encoder)(spec, image_size or None)
    features = extract_features(encoder, images, progress=progress)
    remember_source(source, encoder, images)
    return features


def drift_features(config: DriftConfig, images: ImageSet, progress: StageProgress | None = None,
                   make_encoder: EncoderFactory | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pre-trained and fine-tuned features of ``images``, as ``config`` names the encoders."""
    halves = [(("pre-trained", config.pretrained), 0.0), (("fine-tuned", config.finetuned), 0.5)]
    feats = [encoder_features(spec, images, config.image_size, _embedding_progress(progress, role, spec, start, 0.5),
                              make_encoder) for (role, spec), start in halves]
    return feats[0], feats[1]


def _embedding_progress(progress: StageProgress | None, role: str, spec: str, start: float,
                        span: float) -> Callable[[int, int], None]:
    """The (done, total) callback of `encoder_features` as a stage from ``start`` to ``start + span``, saying
    whether the ``role`` encoder embeds the images or its features are read from an embedding file."""
    from .encoders import vectors_source

    say = progress or (lambda message, fraction: None)
    source = vectors_source(spec)

    def report(done: int, total: int) -> None:
        what = (f"Reading the {role} embeddings from {source}" if source
                else f"Embedding {total} images with the {role} encoder")
        say(f"{what}: {done}/{total}", start + span * done / total)

    return report


def compare_features(config: DriftConfig, images: ImageSet, progress: StageProgress | None = None,
                     make_encoder: EncoderFactory | None = None) -> np.ndarray:
    """The features of ``images`` under the second fine-tuned encoder, ``config.compare``."""
    if not config.compare:
        raise ProxyFDAError("no second fine-tuned encoder to compare with: set compare (e.g. run:<dir>)")
    report = _embedding_progress(progress, "second fine-tuned", config.compare, 0.0, 1.0)
    return encoder_features(config.compare, images, config.image_size, report, make_encoder)


@dataclass
class ThreeWay:
    """Two fine-tunes of the same pre-trained encoder on the same images: ``b`` and ``c`` are their drift
    reports against it, named ``name_b`` and ``name_c`` (e.g. a naive and a Proxy-FDA run)."""

    b: DriftReport
    c: DriftReport
    name_b: str
    name_c: str

    def frame(self) -> pd.DataFrame:
        """One row per point: overlap@k under each fine-tune, their difference (b − c), and how many of its
        pre-trained neighbours only b kept and only c kept. Sorted with the largest |difference| first."""
        only_b, only_c = self._only_counts()
        frame = pd.DataFrame({"id": np.arange(self.b.n), "class": [self.b.class_names[int(c)] for c in self.b.labels],
                              f"overlap {self.name_b}": self.b.overlap, f"overlap {self.name_c}": self.c.overlap,
                              "difference": self.b.overlap - self.c.overlap,
                              f"kept by {self.name_b} only": only_b, f"kept by {self.name_c} only": only_c})
        return frame.iloc[np.argsort(-np.abs(frame["difference"].to_numpy()), kind="stable")].reset_index(drop=True)

    def split(self, i: int) -> dict[str, np.ndarray]:
        """Point i's pre-trained neighbours (in pre-trained order) by who kept them: both, b only, c only, neither."""
        pre = self.b.graph_a.indices[i]
        in_b, in_c = (kept[i] for kept in self._kept())
        return {"both": pre[in_b & in_c], f"{self.name_b} only": pre[in_b & ~in_c],
                f"{self.name_c} only": pre[~in_b & in_c], "neither": pre[~in_b & ~in_c]}

    def summary(self) -> dict[str, float]:
        """Mean overlap@k of each, and the share of points where b keeps more, fewer or as many neighbours."""
        difference = self.b.overlap - self.c.overlap
        return {f"overlap {self.name_b}": float(self.b.overlap.mean()), f"overlap {self.name_c}": float(self.c.overlap.mean()),
                f"{self.name_b} keeps more": float(np.mean(difference > 0)),
                f"{self.name_c} keeps more": float(np.mean(difference < 0)), "tie": float(np.mean(difference == 0))}

    def save(self, out_dir: str | Path) -> Path:
        """``three_way.parquet`` (the frame) and ``three_way.json`` (the summary) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.frame().to_parquet(out / "three_way.parquet", index=False)
        (out / "three_way.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return out

    def _kept(self) -> tuple[np.ndarray, np.ndarray]:
        """[N, k] masks over each point's pre-trained neighbours: still a neighbour under b, under c."""
        pre = self.b.graph_a.indices
        return tuple((pre[:, :, None] == r.graph_b.indices[:, None, :]).any(-1) for r in (self.b, self.c))

    def _only_counts(self) -> tuple[np.ndarray, np.ndarray]:
        in_b, in_c = self._kept()
        return (in_b & ~in_c).sum(1), (~in_b & in_c).sum(1)


def three_way(report_b: DriftReport, report_c: DriftReport, name_b: str = "B", name_c: str = "C") -> ThreeWay:
    """Compare two drift reports of the same images against the same pre-trained space."""
    if not np.array_equal(report_b.graph_a.indices, report_c.graph_a.indices):  # (n, k): images, k and encoder
        raise ProxyFDAError("the two fine-tunes must be compared on the same images, with the same k and the same "
                            "pre-trained encoder (their pre-trained kNN graphs differ)")
    if name_b == name_c:
        name_b, name_c = f"{name_b} (1)", f"{name_c} (2)"
    return ThreeWay(report_b, report_c, name_b, name_c)


def run_drift(config: DriftConfig, progress: StageProgress | None = None) -> tuple[ImageSet, DriftReport]:
    """Everything from specs to report: images, both encoders' features, graphs and metrics."""
    images, _, _, report = run_drift_features(config, progress)
    return images, report


def run_drift_features(config: DriftConfig, progress: StageProgress | None = None
                       ) -> tuple[ImageSet, np.ndarray, np.ndarray, DriftReport]:
    """`run_drift`, with both feature arrays too (what calibration and the maps start from)."""
    say = progress or (lambda message, fraction: None)
    say(f"Loading {config.data}", 0.0)
    images = load_drift_images(config)
    x_a, x_b = drift_features(config, images, lambda message, fraction: say(message, 0.05 + 0.85 * fraction))
    report = compute_drift(x_a, x_b, images.labels, images.class_names, config.k, backend=config.knn_backend,
                           config=config, progress=lambda message, fraction: say(message, 0.9 + 0.1 * fraction))
    return images, x_a, x_b, report


def run_three_way(config: DriftConfig, progress: StageProgress | None = None) -> tuple[ImageSet, ThreeWay]:
    """`run_drift` for ``config.finetuned`` and for ``config.compare``, against the same pre-trained features."""
    say = progress or (lambda message, fraction: None)
    say(f"Loading {config.data}", 0.0)
    images = load_drift_images(config)
    x_a, x_b = drift_features(config, images, lambda message, fraction: say(message, 0.05 + 0.55 * fraction))
    x_c = compare_features(config, images, lambda message, fraction: say(message, 0.6 + 0.25 * fraction))
    say("Building kNN graphs and metrics", 0.85)
    report_b = compute_drift(x_a, x_b, images.labels, images.class_names, config.k, backend=config.knn_backend,
                             config=config)
    report_c = compute_drift(x_a, x_c, images.labels, images.class_names, config.k, backend=config.knn_backend,
                             config=config)
    say("Done", 1.0)
    return images, three_way(report_b, report_c, *encoder_names(config.finetuned, config.compare))


def encoder_names(*specs: str) -> list[str]:
    """Short names for encoder specs in a comparison: a run's folder name (``run:/x/naive-s0`` -> naive-s0),
    an embedding file's name (``vectors:/x/a.npy`` -> a.npy), else the spec itself."""
    from .vectors import describe

    return [Path(spec.removeprefix("run:")).name if spec.startswith("run:")
            else describe(spec.removeprefix("vectors:")) if spec.startswith("vectors:") else spec for spec in specs]


def _default_encoder(spec: str, image_size: int | None) -> "Encoder":
    from .device import default_device
    from .encoders import create_encoder

    return create_encoder(spec, image_size=image_size, device=default_device())


# ---------------------------------------------------------------------------------------------
# drift over time: a run's probe snapshots (proxyfda.runs) against its own step 0


@dataclass
class Timeline:
    """A run's probe set through its evaluations, each compared with step 0 (the pre-trained encoder)."""

    steps: list[int]
    overlap: np.ndarray  # [S, N]: each point's overlap@k with its step-0 neighbours, per snapshot
    scores: pd.DataFrame  # one row per step: overlap@k, CKNNA, linear CKA (and task accuracy when logged)
    images: ImageSet  # the probe images
    k: int
    features: list[np.ndarray]  # the snapshots themselves, one [N, d] per step (for maps over time)

    def first_break(self, threshold: float = 0.5) -> np.ndarray:
        """Per point, the first step at which its overlap@k fell below ``threshold``; -1 if it never did."""
        below = self.overlap < threshold
        steps = np.asarray(self.steps)
        return np.where(below.any(0), steps[below.argmax(0)], -1)

    def broke_first(self, n: int = 20, threshold: float = 0.5) -> pd.DataFrame:
        """The ``n`` points whose neighbourhoods broke earliest (ties: lower final overlap first), with their
        overlap at every step."""
        broke = self.first_break(threshold)
        ids = np.flatnonzero(broke >= 0)
        ids = ids[np.lexsort((self.overlap[-1, ids], broke[ids]))][:n]
        table = pd.DataFrame({"id": ids, "class": [self.images.class_of(int(i)) for i in ids],
                              "broke at step": broke[ids]})
        for s, step in enumerate(self.steps):
            table[f"step {step}"] = self.overlap[s, ids]
        return table


def run_timeline(run_dir: str | Path, k: int = 10) -> Timeline:
    """The `Timeline` of the run at ``run_dir`` from the snapshots it kept (a clear error if it kept none)."""
    from .runs import Run

    run = Run.open(run_dir)
    steps = run.probe_steps()
    if len(steps) < 2 or steps[0] != 0:
        raise ProxyFDAError(f"run '{run.path}' has no feature history (snapshots at steps {steps or 'none'}): "
                            "runs written by proxyfda's training loop keep one; SAFE and WiSE-FT runs do not")
    images = run.probe_images()
    accuracy = {r["step"]: r["accuracy"] for r in run.records() if r.get("kind") == "eval"}
    features = [run.probe_features(step) for step in steps]
    overlap, rows = [], []
    for step, snapshot in zip(steps, features):
        report = compute_drift(features[0], snapshot, images.labels, images.class_names, k)
        overlap.append(report.overlap)
        rows.append({"step": step, "overlap@k": report.metrics["overlap_at_k_mean"],
                     "CKNNA": report.metrics.get("cknna"), "linear CKA": report.metrics["linear_cka"],
                     "task accuracy": accuracy.get(step)})
    return Timeline(steps, np.stack(overlap), pd.DataFrame(rows), images, k, features)
