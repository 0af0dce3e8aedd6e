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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from . import metrics as M
from .config import DriftConfig
from .data import ImageSet, load_images
from .knn import KnnGraph, knn_graph, resolve_backend
from .validation import check_k, unit_rows

if TYPE_CHECKING:
    from .backbones import Encoder

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
    l2_drift: np.ndarray  # per-point distance between the L2-normalised features
    metrics: dict[str, float | int | str]
    class_table: pd.DataFrame
    config: DriftConfig | None = None

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
            "l2_drift": self.l2_drift,
            "neighbours_pretrained": list(self.graph_a.indices),
            "neighbours_finetuned": list(self.graph_b.indices),
        })

    def most_drifted(self, top: int = 20) -> pd.DataFrame:
        """The points whose neighbourhoods changed most: lowest overlap@k, then largest L2 drift."""
        frame = self.points_frame().drop(columns=["neighbours_pretrained", "neighbours_finetuned"])
        return frame.sort_values(["overlap_at_k", "l2_drift"], ascending=[True, False]).head(top)

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
                  backend: str = "auto", config: DriftConfig | None = None) -> DriftReport:
    """kNN graphs of both spaces (cosine), per-point drift and the global preservation metrics.

    ``k`` is checked against the number of points and ``backend`` resolved to a concrete one here,
    once; what is passed on below is already valid.
    """
    n = len(labels)
    k = check_k(k, n)
    backend = resolve_backend(backend, n)
    graph_a = knn_graph(x_a, k, metric="cosine", backend=backend)
    graph_b = knn_graph(x_b, k, metric="cosine", backend=backend)
    overlap = M.knn_overlap(graph_a.indices, graph_b.indices)
    jaccard = M.jaccard(graph_a.indices, graph_b.indices)
    fix = "drop the images whose features are all zero"
    l2 = np.linalg.norm(unit_rows(x_a, "x_a", fix) - unit_rows(x_b, "x_b", fix), axis=1)
    metrics: dict[str, float | int | str] = {
        "n": n,
        "k": k,
        "knn_backend": backend,
        "overlap_at_k_mean": float(overlap.mean()),
        "overlap_at_k_random_baseline": M.overlap_random_baseline(k, n),
        "jaccard_mean": float(jaccard.mean()),
        "linear_cka": M.linear_cka(x_a, x_b),
        "procrustes_disparity": M.procrustes_disparity(x_a, x_b),
        "mean_l2_drift": float(l2.mean()),
    }
    if k < n / 2:  # the definition of trustworthiness needs it
        metrics["trustworthiness"] = M.trustworthiness(x_a, x_b, k, metric="cosine", neighbours=graph_b.indices)
        metrics["continuity"] = M.continuity(x_a, x_b, k, metric="cosine", neighbours=graph_a.indices)
    class_table = M.class_drift(graph_a.indices, graph_b.indices, labels, class_names)
    return DriftReport(k=k, labels=labels, class_names=class_names, graph_a=graph_a, graph_b=graph_b,
                       overlap=overlap, jaccard=jaccard, l2_drift=l2, metrics=metrics, class_table=class_table,
                       config=config)


def load_drift_images(config: DriftConfig) -> ImageSet:
    """The image set a drift config compares (a class-balanced sample of ``config.n`` images)."""
    return load_images(config.data, n=config.n or None, seed=config.seed)


def encoder_features(spec: str, images: ImageSet, image_size: int | None,
                     progress: Callable[[int, int], None] | None = None,
                     make_encoder: EncoderFactory | None = None) -> np.ndarray:
    """Features of ``images`` under the encoder ``spec`` on the fastest device, disk-cached."""
    from .features import extract_features

    encoder = (make_encoder or _default_encoder)(spec, image_size or None)
    return extract_features(encoder, images, progress=progress)


def drift_features(config: DriftConfig, images: ImageSet, progress: StageProgress | None = None,
                   make_encoder: EncoderFactory | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pre-trained and fine-tuned features of ``images``, as ``config`` names the encoders."""
    say = progress or (lambda message, fraction: None)
    feats = []
    for i, (role, spec) in enumerate((("pre-trained", config.pretrained), ("fine-tuned", config.finetuned))):
        def report(done: int, total: int, i: int = i, role: str = role) -> None:
            say(f"Embedding {total} images with the {role} encoder: {done}/{total}", (i + done / total) / 2)

        feats.append(encoder_features(spec, images, config.image_size, report, make_encoder))
    return feats[0], feats[1]


def run_drift(config: DriftConfig, progress: StageProgress | None = None) -> tuple[ImageSet, DriftReport]:
    """Everything from specs to report: images, both encoders' features, graphs and metrics."""
    say = progress or (lambda message, fraction: None)
    say(f"Loading {config.data}", 0.0)
    images = load_drift_images(config)
    x_a, x_b = drift_features(config, images, lambda message, fraction: say(message, 0.05 + 0.85 * fraction))
    say("Building kNN graphs and metrics", 0.9)
    report = compute_drift(x_a, x_b, images.labels, images.class_names, config.k, backend=config.knn_backend,
                           config=config)
    say("Done", 1.0)
    return images, report


def _default_encoder(spec: str, image_size: int | None) -> "Encoder":
    from .device import default_device
    from .encoders import create_encoder

    return create_encoder(spec, image_size=image_size, device=default_device())
