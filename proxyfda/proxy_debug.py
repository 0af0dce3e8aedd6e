"""Look inside Proxy-FDA on one batch: the kNN graph, one anchor's pairs, the proxies and their pooling.

`load_batch` draws a class-balanced batch (as Proxy-FDA's training does) and embeds it with the
pre-trained encoder and with the state being debugged: the start of training (the pre-trained encoder
itself) or a run's checkpoint, whose saved generator is used too. `inspect_batch` calls the real
`ProxyFDALoss` once with ``record_detail`` on and keeps its records: everything the debugger shows is
read from them, nothing is recomputed beside the loss. `option_effects` repeats that over values of
K, the number of proxies or α.

A fresh generator has never trained, so its proxies say little; ``generator_steps`` first trains it on
this batch with its own loss (the encoder frozen), as the first steps of a run would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .config import DEFAULT_FINETUNE
from .data import ImageSet, load_images
from .drift import encoder_features
from .errors import ProxyFDAError
from .knn import KnnGraph, knn_graph
from .losses import build_regularizer
from .methods import METHODS
from .projection import linear_map
from .runs import Run
from .sampling import ClassBalancedSampler
from .training import GENERATOR_LR
from .validation import unit_rows

START = "start"
#: the options whose effect `option_effects` sweeps, with the values it tries by default
EFFECT_VALUES: dict[str, tuple] = {"k": (4, 8, 16), "n_proxies": (1, 4, 8), "alpha": (0.0, 5.0, 20.0)}


@dataclass
class DebugBatch:
    """One batch in both spaces: ``images`` (B of them), unit features ``pre`` and ``ft`` [B, D]."""

    images: ImageSet
    pre: np.ndarray
    ft: np.ndarray
    state: str  # "start", or the run's name
    step: int  # the checkpoint's step (0 at the start)
    options: dict  # the Proxy-FDA options of the run (the method's defaults at the start)
    generator_state: dict | None = None  # the run's saved generator (None: a fresh one)

    @property
    def labels(self) -> np.ndarray:
        return self.images.labels


@dataclass
class Inspection:
    """The records of one `ProxyFDALoss` call (numpy arrays and floats) and the pre-trained kNN graph
    of the batch from `proxyfda.knn`, which must name the same positives the loss used."""

    batch: DebugBatch
    options: dict
    records: dict[str, Any]
    graph: KnnGraph
    generator: str  # where the generator's weights came from, in words
    terms: dict[str, float] = field(default_factory=dict)  # the loss's named terms
    diagnostics: dict[str, float] = field(default_factory=dict)  # `ProxyFDALoss.diagnostics`

    @property
    def n_proxies(self) -> int:
        return int(self.records["proxy_count"][0])

    def pairs(self, anchor: int) -> pd.DataFrame:
        """Anchor ``anchor``'s real pairs, nearest in the pre-trained space first: pre-trained and
        fine-tuned cosine, signed weight (positive: pulled above the threshold; negative: pushed below)."""
        b = len(self.batch.pre)
        r = self.records
        others = np.delete(np.arange(b), anchor)
        pre_sim = self.batch.pre[anchor] @ self.batch.pre[others].T
        frame = pd.DataFrame({"image": others, "class": [self.batch.images.class_of(j) for j in others],
                              "positive": r["pair_positive"][anchor, others],
                              "pre_cos": pre_sim, "ft_cos": r["pair_sim_ft"][anchor, others],
                              "weight": r["pair_weight"][anchor, others]})
        return frame.sort_values("pre_cos", ascending=False, ignore_index=True)

    def proxies(self, anchor: int, members: int = 4) -> pd.DataFrame:
        """Anchor ``anchor``'s proxies: side, weight in the loss, estimated vs actual pre-trained
        similarity, cosine to the anchor, distance to the nearest real feature, and the ``members``
        real images it pools most (indices into the batch, with their pooling weights)."""
        r, b, p = self.records, len(self.batch.pre), self.n_proxies
        pooling = r["proxy_pooling"][anchor]  # [2P, B]
        rows = []
        for q in range(2 * p):
            top = np.argsort(-pooling[q])[:members]
            rows.append({"proxy": q, "side": "positive" if q < p else "negative",
                         "weight": r["pair_weight"][anchor, b + q], "sim_estimated": r["proxy_sim_estimated"][anchor, q],
                         "sim_actual": r["proxy_sim_actual"][anchor, q], "ft_cos": r["pair_sim_ft"][anchor, b + q],
                         "nn_dist": r["proxy_nn_dist"][anchor, q], "members": top.tolist(),
                         "member_weights": pooling[q, top].round(3).tolist()})
        return pd.DataFrame(rows)

    def anchor_terms(self, anchor: int) -> dict[str, float]:
        """The anchor's own loss terms: its threshold cosine and its pull (positive) and push (negative) parts."""
        r = self.records
        return {"threshold": float(r["anchor_threshold"][anchor]), "loss": float(r["anchor_loss"][anchor]),
                "loss_pos": float(r["anchor_loss_pos"][anchor]), "loss_neg": float(r["anchor_loss_neg"][anchor])}

    def map_points(self) -> pd.DataFrame:
        """Real features and every proxy on one linear map of the fine-tuned space (fitted on the
        real features, `projection.linear_map`): columns x, y, kind (real / proxy +/−), anchor, slot."""
        b, p = len(self.batch.pre), self.n_proxies
        proxies = self.records["proxies"].reshape(b * 2 * p, -1)
        xy = linear_map(np.vstack([self.batch.ft, proxies]), fit_on=self.batch.ft)
        slot = np.tile(np.arange(2 * p), b)
        kind = np.concatenate([np.full(b, "real"), np.where(slot < p, "proxy +", "proxy −")])
        anchor = np.concatenate([np.arange(b), np.repeat(np.arange(b), 2 * p)])
        classes = [self.batch.images.class_of(i) for i in anchor]
        return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "kind": kind, "anchor": anchor,
                             "slot": np.concatenate([np.full(b, -1), slot]), "class": classes})


def load_batch(state: str | Path = START, data: str | None = None, batch_size: int = 64, classes: int = 16,
               seed: int = 0, base: str | None = None, progress: Callable[[str, float], None] | None = None) -> DebugBatch:
    """A class-balanced batch of ``data`` embedded by the pre-trained encoder and by ``state``.

    ``state``: "start" (fine-tuned = pre-trained, the first step of any run) or a run directory
    (its checkpoint, its base encoder, its data by default, and its generator if it was Proxy-FDA).
    """
    options = dict(METHODS["proxy-fda"].options)
    generator_state, step = None, 0
    if str(state) == START:
        base = base or DEFAULT_FINETUNE.base_encoder
        data = data or DEFAULT_FINETUNE.data
        image_size, name, ft_spec = DEFAULT_FINETUNE.image_size, START, None
    else:
        run = Run.open(state)
        if run.method == "safe":
            raise ProxyFDAError(f"run {run.name} is a SAFE run: it tunes attention pooling only and has no proxies; "
                                "pick a fine-tuned run, or 'start'")
        base, data, image_size = run.config.base_encoder, data or run.config.data, run.config.image_size
        checkpoint = run.checkpoint_state()
        step, name, ft_spec = int(checkpoint["step"]), run.name, run.spec
        if run.method == "proxy-fda":
            options = dict(run.config.reg_options)
            generator_state = checkpoint.get("regularizer")
    if batch_size < 4:
        raise ProxyFDAError(f"a batch needs at least 4 images (an anchor, neighbours and non-neighbours), got {batch_size}")
    pool = load_images(data)
    per_class = max(1, batch_size // classes)
    sampler = ClassBalancedSampler(pool.labels, m=classes, n=per_class, seed=seed, hard_fraction=0.0)
    images = pool.subset(np.sort(sampler.next_batch()))
    say = progress or (lambda message, fraction: None)
    say("embedding the batch with the pre-trained encoder", 0.0)
    pre = encoder_features(base, images, image_size)
    say("embedding the batch with the fine-tuned state", 0.5)
    ft = pre if ft_spec is None else encoder_features(ft_spec, images, image_size)
    say("embedded", 1.0)
    fix = "these images have no features to compare; pick another batch seed"
    return DebugBatch(images, unit_rows(pre, "the pre-trained batch", fix), unit_rows(ft, "the fine-tuned batch", fix),
                      name, step, options, generator_state)


def inspect_batch(batch: DebugBatch, options: dict | None = None, generator_steps: int = 0) -> Inspection:
    """One call of the real `ProxyFDALoss` on ``batch`` with detailed records.

    ``options`` override the batch's (the run's, or the method's defaults). The run's saved generator
    is used when its shape still fits the options (K and α do not change it; the number of proxies
    does); ``generator_steps`` > 0 first trains the generator on this batch with its own loss (Adam,
    lr 1e-3), the encoder's features fixed.
    """
    options = {**batch.options, **(options or {})}
    loss = build_regularizer("proxy-fda", **options)
    source = f"fresh (seed {loss.generator.seed}), untrained"
    if batch.generator_state is not None:
        try:
            loss.load_state_dict(batch.generator_state)
            source = f"the run's, saved at step {batch.step}"
        except RuntimeError:  # a different number of proxies: the saved slots do not fit
            source = f"fresh (seed {loss.generator.seed}; the run's does not fit these options), untrained"
    feats, feats_pre = torch.from_numpy(batch.ft), torch.from_numpy(batch.pre)
    if generator_steps > 0:
        optimizer = torch.optim.Adam(loss.generator_parameters(), lr=GENERATOR_LR)
        loss.record_stats = False
        for _ in range(generator_steps):
            optimizer.zero_grad(set_to_none=True)
            loss(feats, feats_pre, return_terms=True)["generator"].backward()
            optimizer.step()
        loss.record_stats = True
        source += f" + {generator_steps} steps on this batch"
    loss.record_detail = True
    with torch.no_grad():
        terms = loss(feats, feats_pre, return_terms=True)
    records = {name: value.numpy() if isinstance(value, torch.Tensor) else value for name, value in loss.records.items()}
    graph = knn_graph(batch.pre, loss.fda.k)
    scalars = {name: float(value) for name, value in terms.items() if value.ndim == 0}
    return Inspection(batch, options, records, graph, source, scalars, loss.diagnostics())


def option_effects(batch: DebugBatch, option: str, values: tuple | list | None = None, options: dict | None = None,
                   generator_steps: int = 50, progress: Callable[[str, float], None] | None = None) -> pd.DataFrame:
    """How the batch's proxies and loss change with one option (one row per value): mean distance of a
    proxy to its nearest real feature, diversity between an anchor's proxies, |estimated − actual|
    similarity, the FDA loss and its pull and push parts, the other ``options`` as given. Each value gets
    a generator trained ``generator_steps`` on the batch, so α (which only trains the generator) shows."""
    if option not in EFFECT_VALUES:
        raise ProxyFDAError(f"option effects are shown for {', '.join(EFFECT_VALUES)}, not '{option}'")
    values = list(values or EFFECT_VALUES[option])
    rows = []
    for i, value in enumerate(values):
        if progress:
            progress(f"{option} = {value}", i / len(values))
        found = inspect_batch(batch, {**(options or {}), option: value}, generator_steps=generator_steps)
        rows.append({option: value, **found.diagnostics,
                     **{name: found.terms[name] for name in ("fda", "loss_pos", "loss_neg", "generator")}})
    if progress:
        progress("done", 1.0)
    return pd.DataFrame(rows)


def knob_defaults(batch: DebugBatch) -> dict[str, float]:
    """The values of K, proxies per side and α that the batch's options amount to (the run's, or the
    method's defaults), for a form to start from."""
    loss = build_regularizer("proxy-fda", **batch.options)
    return {"k": loss.fda.k, "n_proxies": loss.generator.n_proxies, "alpha": loss.generator.alpha}

