"""FDA: keep the fine-tuned features' neighbourhoods where the pre-trained encoder put them.

For anchor i of a batch, its K nearest others in the PRE-TRAINED space are positives, every other
sample a negative. A SigLIP-style sigmoid loss whose ±1 labels are signed weights w_ij pulls the
positives above a cosine threshold and pushes the negatives below it, in the FINE-TUNED space:

    pair loss = softplus(w_ij · (b_i − cos(x_i, x_j) / τ)),   threshold θ_i = b_i · τ

w_ij = ŵ_ij = cos(x̂_i, x̂_j) > 0 for positives and a negative weight for negatives. The pair loss is
small once positives sit well above θ_i and negatives well below it. See docs/METHOD.md for defaults.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProxyFDAError
from ..validation import check_choice
from .base import RecordingLoss, check_feature_pair, check_int, check_number, register_regularizer

NEGATIVE_WEIGHTS = ("one", "sim", "one_minus_sim")
REDUCTIONS = ("paper", "balanced")
THRESHOLDS = ("fixed", "knn")
#: named variants: the defaults of the options a preset decides (explicit options still win).
#: "ours": a per-anchor threshold at the pre-trained kNN boundary, graded negatives, balanced sides.
#: "paper": the paper's form, a fixed threshold b·τ and the 1/(B−1) sum over pairs; b is not published,
#: 5 (threshold cos 0.5) is the spec's probe value.
FDA_PRESETS: dict[str, dict[str, Any]] = {
    "ours": {"bias": 0.0, "threshold": "knn", "negative_weight": "one_minus_sim", "reduction": "balanced"},
    "paper": {"bias": 5.0, "threshold": "fixed", "negative_weight": "one_minus_sim", "reduction": "paper"},
}


class Neighbours(NamedTuple):
    """The pre-trained kNN graph of one batch.

    order [B, B-1]: every other sample by decreasing pre-trained similarity (positives first);
    positive [B, B] bool: j is one of i's K neighbours; boundary [B]: midpoint between the K-th and
    (K+1)-th pre-trained similarity (the K-th itself when there is no (K+1)-th).
    """

    order: torch.Tensor
    positive: torch.Tensor
    boundary: torch.Tensor


class SigmoidTerms(NamedTuple):
    """Per-anchor [B] loss and its positive and negative parts (loss = pos + neg)."""

    loss: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


def pretrained_neighbours(sims_pre: torch.Tensor, k: int) -> Neighbours:
    """Each sample's K nearest others in a [B, B] cosine matrix, self excluded."""
    b = sims_pre.shape[0]
    if k >= b:
        raise ProxyFDAError(f"k={k} neighbours need a batch of more than k images, got {b}: lower k or raise the "
                            "batch size (k must also exceed the images per class so neighbourhoods cross classes)")
    eye = torch.eye(b, dtype=torch.bool, device=sims_pre.device)
    ranked, order = sims_pre.masked_fill(eye, -math.inf).sort(dim=1, descending=True)
    order, ranked = order[:, :-1], ranked[:, :-1]  # self sorts last
    positive = torch.zeros_like(eye).scatter_(1, order[:, :k], True)
    boundary = ranked[:, k - 1] if k == b - 1 else 0.5 * (ranked[:, k - 1] + ranked[:, k])
    return Neighbours(order, positive, boundary)


def pair_weights(sims_pre: torch.Tensor, positive: torch.Tensor, negative_weight: str) -> torch.Tensor:
    """Signed weights: ŵ for positives, the chosen negative weight for the rest.

    Similarities are clipped where the sign would otherwise flip: a positive with ŵ ≤ 0 gets weight 0
    (no pull) and "sim" uses −max(ŵ, 0) (never a pull on a negative).
    """
    sims = sims_pre.clamp(min=0.0)
    if negative_weight == "one":
        negative = -torch.ones_like(sims_pre)
    elif negative_weight == "sim":
        negative = -sims
    else:  # one_minus_sim: similar non-neighbours are pushed less, as the pre-trained space has them
        negative = sims_pre - 1.0
    return torch.where(positive, sims, negative)


def weighted_sigmoid_loss(sims: torch.Tensor, weights: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
                          tau: torch.Tensor, bias: torch.Tensor, reduction: str) -> SigmoidTerms:
    """softplus(w · (b − s/τ)) over the valid [B, N] pairs of anchors and others, reduced per anchor.

    reduction "paper": sum over all valid pairs / their number (1/(B−1) Σ_j in FDA); "balanced": mean
    over positives + mean over negatives, so the many negatives cannot swamp the K positives.
    ``bias`` is a scalar or [B, 1] (one threshold per anchor).
    """
    pair = F.softplus(weights * (bias - sims / tau))
    pos, neg = positive & valid, ~positive & valid
    if reduction == "paper":
        count = valid.sum(dim=1).clamp(min=1)
        pos_part, neg_part = (pair * pos).sum(1) / count, (pair * neg).sum(1) / count
    else:
        pos_part = (pair * pos).sum(1) / pos.sum(1).clamp(min=1)
        neg_part = (pair * neg).sum(1) / neg.sum(1).clamp(min=1)
    return SigmoidTerms(pos_part + neg_part, pos_part, neg_part)


def record_pair_stats(loss: RecordingLoss, sims: torch.Tensor, weights: torch.Tensor, positive: torch.Tensor,
                      valid: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor, terms: SigmoidTerms) -> None:
    """What the FDA pairs looked like: counts, mean fine-tuned cosines per side, weights, τ and b.

    With ``record_detail``, also every pair [B, N] (N = B real others, then any proxies):
    ``pair_sim_ft``, ``pair_weight``, ``pair_positive``, ``pair_valid``; and per anchor [B]: its
    ``anchor_threshold`` (the cosine b_i·τ) and the two parts of its loss, ``anchor_loss_pos`` and
    ``anchor_loss_neg`` (their sum is the ``anchor_loss`` term).
    """
    if not loss.record_stats:
        return
    loss.record_details(pair_sim_ft=sims, pair_weight=weights, pair_positive=positive, pair_valid=valid,
                        anchor_threshold=(bias * tau).reshape(-1).expand(sims.shape[0]),
                        anchor_loss_pos=terms.pos, anchor_loss_neg=terms.neg)
    with torch.no_grad():
        pos, neg = positive & valid, ~positive & valid
        loss.record("pairs_per_anchor", (int(pos[0].sum()), int(neg[0].sum())))
        loss.record("pos_sim_ft", sims[pos].mean())
        loss.record("neg_sim_ft", sims[neg].mean())  # the mean of no pair is NaN: "none this batch"
        loss.record("pos_weight_mean", weights[pos].mean())
        loss.record("neg_weight_mean", weights[neg].mean())
        loss.record("tau", tau)
        loss.record("bias", bias.mean())
        loss.record("threshold", (bias * tau).mean())


@register_regularizer("fda")
class FDALoss(RecordingLoss):
    """Feature distribution alignment (Proxy-FDA without proxies), one batch at a time.

    forward(feats [B, D] fine-tuned, gradient flows; feats_pre [B, D] frozen pre-trained, detached).
    Terms: "loss" (λ·fda), "fda", its pull and push parts "loss_pos" and "loss_neg", and "anchor_loss"
    [B], each anchor's own loss (fda is its mean), e.g. to differentiate one anchor's pairs alone.

    Options:
      k: neighbours per anchor in the pre-trained space (must be < B, and > images per class).
      tau: temperature τ; cosines are divided by it.
      bias: b. With threshold="fixed" the pull/push threshold is the cosine b·τ (paper form); with
        threshold="knn" it is an offset added to each anchor's own pre-trained kNN boundary
        (b_i = bias + boundary_i / τ), so identical spaces always sit on the right side of it.
      threshold: "fixed" or "knn" (see bias).
      negative_weight: weight of a non-neighbour pair: "one" (−1), "sim" (−ŵ), "one_minus_sim" (−(1−ŵ)).
      reduction: "paper" (1/(B−1) Σ_j) or "balanced" (mean over neighbours + mean over non-neighbours).
      learn_tau, learn_bias: make log τ / b parameters (add ``loss.parameters()`` to an optimizer).
      weight: λ, multiplies the returned loss.
      preset: "ours" (default) or "paper" (see `FDA_PRESETS`): the defaults of bias, threshold,
        negative_weight and reduction; any of them given explicitly overrides its preset value.

    Distributed training passes it the global batch (``global_batch``): the graph is the one a single
    process would build.
    """

    global_batch = True

    def __init__(self, k: int = 8, tau: float = 0.1, bias: float | None = None, threshold: str | None = None,
                 negative_weight: str | None = None, reduction: str | None = None, learn_tau: bool = False,
                 learn_bias: bool = False, weight: float = 1.0, preset: str = "ours") -> None:
        super().__init__()
        self.preset = check_choice(preset, FDA_PRESETS, "preset")
        chosen = {"bias": bias, "threshold": threshold, "negative_weight": negative_weight, "reduction": reduction}
        values = {**FDA_PRESETS[preset], **{name: value for name, value in chosen.items() if value is not None}}
        bias, threshold, negative_weight, reduction = (values[name] for name in chosen)
        self.k = check_int(k, "k")
        self.threshold = check_choice(threshold, THRESHOLDS, "threshold")
        self.negative_weight = check_choice(negative_weight, NEGATIVE_WEIGHTS, "negative_weight")
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.weight = check_number(weight, "weight (λ)", low=0.0)
        log_tau = torch.tensor(math.log(check_number(tau, "tau", low=0.0, low_open=True)))
        bias_value = torch.tensor(check_number(bias, "bias"))
        _parameter_or_buffer(self, "log_tau", log_tau, learn_tau)
        _parameter_or_buffer(self, "bias", bias_value, learn_bias)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def anchor_bias(self, graph: Neighbours) -> torch.Tensor:
        """b per anchor, [B, 1]."""
        if self.threshold == "fixed":
            return self.bias.expand(graph.boundary.shape[0], 1)
        return self.bias + graph.boundary[:, None] / self.tau

    def compute(self, feats: torch.Tensor, feats_pre: torch.Tensor) -> dict[str, torch.Tensor]:
        x, x_pre = check_feature_pair(feats, feats_pre)
        sims, sims_pre = x @ x.T, x_pre @ x_pre.T
        graph = pretrained_neighbours(sims_pre, self.k)
        valid = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        weights = pair_weights(sims_pre, graph.positive, self.negative_weight)
        tau, bias = self.tau, self.anchor_bias(graph)
        terms = weighted_sigmoid_loss(sims, weights, graph.positive, valid, tau, bias, self.reduction)
        record_pair_stats(self, sims, weights, graph.positive, valid, tau, bias, terms)
        fda = terms.loss.mean()
        return {"loss": self.weight * fda, "fda": fda, "loss_pos": terms.pos.mean(), "loss_neg": terms.neg.mean(),
                "anchor_loss": terms.loss}

    def extra_repr(self) -> str:
        return (f"preset={self.preset!r}, k={self.k}, tau={self.tau.item():.4g}, bias={self.bias.item():.4g}, "
                f"threshold={self.threshold!r}, "
                f"negative_weight={self.negative_weight!r}, reduction={self.reduction!r}, weight={self.weight}")


def _parameter_or_buffer(module: nn.Module, name: str, value: torch.Tensor, learnable: bool) -> None:
    if learnable:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)
