"""Proxy-FDA: FDA over the real batch plus synthetic features (proxies) pooled from it.

For each anchor, a light `ProxyGenerator` pools its pre-trained neighbours X⁺ into proxy positives
and its non-neighbours X⁻ into proxy negatives, each a softmax-weighted (convex) combination of real
fine-tuned features, and gives every proxy a pre-trained similarity to weight it with. The proxies
join the real pairs in the same weighted sigmoid loss as FDA.

Two optimisers: the encoder's loss never trains the generator (its pooling weights are detached
there, unless ``train_generator_with_fda``), and the generator's own loss is computed on detached
features, so it never trains the encoder::

    terms = proxy_fda(feats, feats_pre, return_terms=True)
    (task_loss + terms["loss"] + terms["generator"]).backward()   # disjoint gradients
    encoder_optimizer.step()      # encoder params (+ proxy_fda.fda_parameters() if τ/b are learnt)
    generator_optimizer.step()    # proxy_fda.generator_parameters()

Everything about a proxy is computed from [B, B] cosine matrices: a proxy p = Σ_j a_j x_j has
x_i·p = Σ_j a_j (x_i·x_j) and |p|² = aᵀ G a with G the batch's Gram matrix, so no D-wide work is
needed except for the generator's variance term.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProxyFDAError
from ..validation import check_choice
from .base import RecordingLoss, check_feature_pair, check_int, check_number, register_regularizer, unit_rows
from .fda import FDALoss, pair_weights, pretrained_neighbours, record_pair_stats, weighted_sigmoid_loss

PROXY_SIMILARITIES = ("estimated", "pooled")

#: per-member scalar descriptors: pre-trained cos, fine-tuned cos, their difference, rank, is-positive
_SCALAR_DESCRIPTORS = 5
#: anchors whose pooling weights are recorded
_RECORD_ANCHORS = 4


class PoolResult(NamedTuple):
    """weights [B, 2P, S]: pooling weights over the S members (P positive slots, then P negative
    slots; each row sums to 1 over its own set, 0 elsewhere); sim_est [B, 2P]: estimated ŵ per proxy."""

    weights: torch.Tensor
    sim_est: torch.Tensor


class ProxyOutput(NamedTuple):
    """Proxies [B, P, D], their pooling weights over the set ([B, P, K] / [B, P, M]), the generator's
    estimated pre-trained similarity and the pooled twin's actual one ([B, P])."""

    pos_proxies: torch.Tensor
    neg_proxies: torch.Tensor
    pos_weights: torch.Tensor
    neg_weights: torch.Tensor
    pos_sim_est: torch.Tensor
    neg_sim_est: torch.Tensor
    pos_sim_pooled: torch.Tensor
    neg_sim_pooled: torch.Tensor


class GeneratorTerms(NamedTuple):
    """The generator's loss and its parts (scalars), plus the proxies' norms [B, Q] and cosines to
    every real feature of the batch [B, Q, B] (for records)."""

    loss: torch.Tensor
    manifold: torch.Tensor
    variance: torch.Tensor
    estimate: torch.Tensor
    norms: torch.Tensor
    member_cos: torch.Tensor


def pooled_cosine(weights: torch.Tensor, anchor_rows: torch.Tensor,
                  gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine between anchor i and the pooled point p_iq = Σ_j weights[i, q, j] x_j, from similarities only.

    weights [B, Q, B] (over batch rows); anchor_rows [B, B] = x_i · x_j; gram [B, B] = x_j · x_l.
    Returns (cos [B, Q], |p| [B, Q], p · x_l [B, Q, B]).
    """
    wg = weights @ gram
    norms = (wg * weights).sum(-1).clamp_min(1e-12).sqrt()
    cos = torch.einsum("iqj,ij->iq", weights, anchor_rows) / norms
    return cos, norms, wg


def manifold_infonce(logits: torch.Tensor, own: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE per proxy, SupCon-style: the mean over its own set's members j of
    −log(e^logit_j / Σ_valid e^logit); [..., N] -> [...].

    Averaging over the members (rather than −log Σ_own) rewards being close to all of them: with a
    log-sum, a proxy that copies one member (cos 1 with itself) wins and pooling goes one-hot.
    """
    own = own & valid
    everything = logits.masked_fill(~valid, -math.inf).logsumexp(-1)
    own_mean = (logits * own).sum(-1) / own.sum(-1).clamp(min=1)
    return everything - own_mean


def variance_hinge(proxies: torch.Tensor, target_std: torch.Tensor, gamma: float) -> torch.Tensor:
    """VICReg-style hinge: mean over dims of relu(γ·σ_set − σ_proxies), in units of the set's mean σ.

    proxies [N, P, D] (σ over the P proxies of one set); target_std [N, D] (the set's real members).
    0 when the proxies spread at least γ times as much as their set, γ when they all coincide.
    """
    centred = proxies - proxies.mean(dim=1, keepdim=True)
    std = (centred.square().mean(dim=1) + 1e-10).sqrt()  # not Tensor.var: its strided CPU reduction is ~20x slower
    return F.relu(gamma * target_std - std).mean(-1) / target_std.mean(-1).clamp_min(1e-12)


class SequenceConv(nn.Module):
    """1-D convolution with 'same' padding along the member axis of channels-last [B, S, C] inputs.

    One matmul for all kernel taps, then shifted adds: for the generator's tiny shapes this beat
    nn.Conv1d (two kernel-3 layers, H=32, forward+backward, one core: 2.5 vs 3.2 ms) and needs no
    transposes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ProxyFDAError(f"kernel_size must be odd ('same' padding), got {kernel_size}")
        self.kernel_size, self.out_channels = kernel_size, out_channels
        bound = 1.0 / math.sqrt(in_channels * kernel_size)  # nn.Conv1d's default initialisation range
        self.weight = nn.Parameter(torch.empty(in_channels, kernel_size * out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = (x @ self.weight).split(self.out_channels, dim=-1)  # tap t reads member s + t − half
        half, out = self.kernel_size // 2, self.bias
        for t, tap in enumerate(taps):
            shift = t - half
            if shift < 0:
                tap = F.pad(tap[:, :shift], (0, 0, -shift, 0))
            elif shift > 0:
                tap = F.pad(tap[:, shift:], (0, 0, 0, shift))
            out = out + tap
        return out


class ProxyGenerator(nn.Module):
    """Pools an anchor's positive and negative sets into proxies (21K parameters whatever D is).

    Each set member is described by small numbers, never by its D features: its cosine to the anchor
    in the pre-trained and fine-tuned spaces and their difference, its rank, which set it is in, and a
    fixed random projection of its fine-tuned feature to ``proj_dim`` dims (seeded, not a parameter).
    Members are a sequence ordered by pre-trained similarity (positives first). Two 1-D convolutions
    over that sequence (kernel 3, then 1) turn descriptors into tokens; one attention layer has 2P slot
    queries (P per
    side, conditioned on the mean token of each set) attend to the tokens of their own set: its softmax
    IS the pooling, so each proxy is a convex combination of its set's real features. A linear head on
    the attention output corrects the pooled pre-trained similarity Σ a_j ŵ_j into the proxy's
    estimated similarity.

    Options of its own loss (`objective`): alpha (weight of the variance term), temperature (of the
    InfoNCE manifold term), gamma (target spread, as a fraction of the set's own spread),
    estimate_loss (train the similarity head to match the pooled twin's similarity), variance_dims
    (None: the variance hinge runs on all D dims; an int: on the dims of a fixed random projection
    of that width, which keeps its cost independent of D: 12.6 -> 1.6 ms at B=64, D=1280, one core).
    """

    def __init__(self, n_proxies: int = 4, hidden: int = 32, proj_dim: int = 16, alpha: float = 5.0,
                 temperature: float = 0.1, gamma: float = 0.5, estimate_loss: bool = True,
                 variance_dims: int | None = 64, seed: int = 0) -> None:
        super().__init__()
        self.n_proxies = check_int(n_proxies, "n_proxies")
        self.hidden = check_int(hidden, "hidden")
        self.proj_dim = check_int(proj_dim, "proj_dim", low=0)
        self.alpha = check_number(alpha, "alpha", low=0.0)
        self.temperature = check_number(temperature, "temperature", low=0.0, low_open=True)
        self.gamma = check_number(gamma, "gamma", low=0.0)
        self.estimate_loss = bool(estimate_loss)
        self.variance_dims = None if variance_dims is None else check_int(variance_dims, "variance_dims")
        self.seed = int(seed)
        self._projections: dict[tuple, torch.Tensor] = {}
        slots = 2 * self.n_proxies
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on `seed` only
            torch.manual_seed(self.seed)
            self.conv1 = SequenceConv(_SCALAR_DESCRIPTORS + self.proj_dim, hidden, kernel_size=3)
            self.conv2 = SequenceConv(hidden, hidden, kernel_size=1)
            self.key = nn.Linear(hidden, hidden, bias=False)  # a key bias adds a constant per query: no effect
            self.slots = nn.Parameter(torch.randn(slots, hidden))
            self.query = nn.Linear(2 * hidden, slots * hidden)
            self.sim_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.sim_head.weight)
        nn.init.zeros_(self.sim_head.bias)

    def project(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """x [..., D] -> [..., width] (default proj_dim) by a fixed Gaussian matrix drawn from the seed;
        a unit x gets ~N(0, 1) entries. Not a parameter: regenerated, never trained or saved."""
        width = self.proj_dim if width is None else width
        key = (x.shape[-1], width, x.device, x.dtype)
        if key not in self._projections:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + width)
            matrix = torch.randn(x.shape[-1], width, generator=generator)
            self._projections[key] = matrix.to(device=x.device, dtype=x.dtype)
        return x @ self._projections[key]

    def pool(self, sim_ft: torch.Tensor, sim_pre: torch.Tensor, proj: torch.Tensor, n_pos: int) -> PoolResult:
        """Pooling weights and estimated similarities from per-member descriptors.

        sim_ft, sim_pre [B, S]: each member's cosine to its anchor (fine-tuned, pre-trained);
        proj [B, S, proj_dim]; the first ``n_pos`` members are the positives, the rest negatives.
        """
        b, s = sim_ft.shape
        if not 0 < n_pos < s:
            raise ProxyFDAError(f"each anchor needs at least one positive and one negative member, got {n_pos} "
                                f"positives among {s} members: lower k or raise the batch size")
        p = self.n_proxies
        is_pos = torch.arange(s, device=sim_ft.device) < n_pos
        rank = torch.linspace(0.0, 1.0, s, device=sim_ft.device, dtype=sim_ft.dtype).expand(b, s)
        scalars = torch.stack([sim_pre, sim_ft, sim_ft - sim_pre, rank, is_pos.to(sim_ft.dtype).expand(b, s)], -1)
        descriptors = torch.cat([scalars, proj], -1)  # [B, S, C]
        tokens = F.relu(self.conv2(F.relu(self.conv1(descriptors))))  # [B, S, H]
        side = is_pos.to(tokens.dtype)
        context = torch.cat([side @ tokens / n_pos, (1.0 - side) @ tokens / (s - n_pos)], -1)  # [B, 2H]
        queries = self.slots + self.query(context).view(b, 2 * p, self.hidden)
        # q·(W_k t) computed as (W_kᵀ q)·t: the key map runs on 2P queries instead of S tokens
        logits = (queries @ self.key.weight) @ tokens.transpose(1, 2) / math.sqrt(self.hidden)  # [B, 2P, S]
        own_set = (torch.arange(2 * p, device=sim_ft.device) < p)[:, None] == is_pos[None, :]
        weights = logits.masked_fill(~own_set, -math.inf).softmax(-1)
        base = (weights * sim_pre[:, None, :]).sum(-1)
        sim_est = (base + self.sim_head(weights @ tokens).squeeze(-1)).clamp(-1.0, 1.0)
        return PoolResult(weights, sim_est)

    def forward(self, anchor: torch.Tensor, anchor_pre: torch.Tensor, pos: torch.Tensor, pos_pre: torch.Tensor,
                neg: torch.Tensor, neg_pre: torch.Tensor) -> ProxyOutput:
        """Proxies for B anchors from their sets: anchor [B, D], pos [B, K, D], neg [B, M, D] (fine-tuned)
        and the same in the pre-trained space (``*_pre``). Proxies pool the members as given (pass
        L2-normalised features to match `ProxyFDALoss`); descriptors use cosines, so scale is irrelevant.
        """
        _check_sets(anchor, anchor_pre, pos, pos_pre, neg, neg_pre)
        k, p = pos.shape[1], self.n_proxies
        members, members_pre = torch.cat([pos, neg], 1), torch.cat([pos_pre, neg_pre], 1)
        unit_members = unit_rows(members.detach())
        sim_ft = torch.einsum("bd,bsd->bs", unit_rows(anchor.detach()), unit_members)
        sim_pre = torch.einsum("bd,bsd->bs", unit_rows(anchor_pre.detach()), unit_rows(members_pre.detach()))
        pooled = self.pool(sim_ft, sim_pre, self.project(unit_members), k)
        proxies = pooled.weights @ members
        twin = F.cosine_similarity(anchor_pre.detach()[:, None, :], pooled.weights.detach() @ members_pre.detach(), dim=-1)
        return ProxyOutput(proxies[:, :p], proxies[:, p:], pooled.weights[:, :p, :k], pooled.weights[:, p:, k:],
                           pooled.sim_est[:, :p], pooled.sim_est[:, p:], twin[:, :p], twin[:, p:])

    def objective(self, weights: torch.Tensor, sim_est: torch.Tensor, twin: torch.Tensor, feats: torch.Tensor,
                  gram: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> GeneratorTerms:
        """L_proxy = Σ_sides (manifold + α · variance) [+ MSE(estimated ŵ, pooled twin's ŵ)].

        weights [B, 2P, B] over batch rows (with gradient to the generator); feats [B, D] unit and
        detached, gram = feats·featsᵀ; positive/valid [B, B] from the pre-trained graph. Manifold: each
        proxy's InfoNCE over its cosines to all other real features, its own set being the positives.
        """
        b, p = feats.shape[0], self.n_proxies
        _, norms, wg = pooled_cosine(weights, gram, gram)
        member_cos = wg / norms[..., None]
        sides = torch.stack([positive, valid & ~positive], 1)  # [B, 2, B]
        own = sides.repeat_interleave(p, dim=1)  # [B, 2P, B]
        manifold = manifold_infonce(member_cos / self.temperature, own, valid[:, None, :]).view(b, 2, p).mean((0, 2))
        dims = feats if self.variance_dims is None else self.project(feats, self.variance_dims)
        set_weights = sides.to(feats.dtype) / sides.sum(-1, keepdim=True).clamp(min=1)
        mean, mean_sq = set_weights @ dims, set_weights @ dims.square()
        set_std = (mean_sq - mean.square()).clamp_min(0.0).sqrt()  # [B, 2, dims]
        proxies = (weights @ dims).view(b * 2, p, -1)
        variance = variance_hinge(proxies, set_std.view(b * 2, -1), self.gamma).view(b, 2).mean(0)
        estimate = F.mse_loss(sim_est, twin.detach())
        loss = (manifold + self.alpha * variance).sum() + (estimate if self.estimate_loss else 0.0)
        return GeneratorTerms(loss, manifold.sum(), variance.sum(), estimate, norms, member_cos)


@register_regularizer("proxy-fda")
class ProxyFDALoss(RecordingLoss):
    """FDA over [X⁺, P⁺] and [X⁻, P⁻]; the generator's own loss comes back as the ``"generator"`` term.

    forward(feats [B, D], feats_pre [B, D], return_terms=False). Options (FDA's own, e.g. k, tau,
    bias, negative_weight, reduction, weight, are passed through to `FDALoss`):
      n_proxies: proxies per anchor per side. alpha, temperature, gamma, estimate_loss, variance_dims:
        the generator's loss (see `ProxyGenerator`). hidden, proj_dim, seed: its size and seed.
      proxy_similarity: "estimated" (the generator's head, as in the paper) or "pooled" (the exact
        cosine between the anchor and the same convex combination of pre-trained features).
      proxy_weight: multiplies the proxies' pair weights (one reading of the paper's s = 0.4).
      detach_proxies: proxies act as fixed targets for the anchor only (no gradient to their members).
      train_generator_with_fda: let the encoder's loss reach the generator's parameters too.
    """

    def __init__(self, n_proxies: int = 4, alpha: float = 5.0, temperature: float = 0.1, gamma: float = 0.5,
                 estimate_loss: bool = True, proxy_similarity: str = "estimated", proxy_weight: float = 1.0,
                 detach_proxies: bool = False, train_generator_with_fda: bool = False, hidden: int = 32,
                 proj_dim: int = 16, variance_dims: int | None = 64, seed: int = 0, **fda_options: Any) -> None:
        super().__init__()
        unknown = sorted(set(fda_options) - set(FDALoss.option_names()))
        if unknown:
            raise ProxyFDAError(f"ProxyFDALoss has no option(s) {', '.join(unknown)}; it accepts: "
                                f"{', '.join(self.option_names())}")
        self.fda = FDALoss(**fda_options)
        self.generator = ProxyGenerator(n_proxies, hidden, proj_dim, alpha, temperature, gamma, estimate_loss,
                                        variance_dims, seed)
        self.proxy_similarity = check_choice(proxy_similarity, PROXY_SIMILARITIES, "proxy_similarity")
        self.proxy_weight = check_number(proxy_weight, "proxy_weight", low=0.0)
        self.detach_proxies = bool(detach_proxies)
        self.train_generator_with_fda = bool(train_generator_with_fda)

    @classmethod
    def option_names(cls) -> list[str]:
        return super().option_names() + FDALoss.option_names()

    def generator_parameters(self) -> list[nn.Parameter]:
        """For the generator's optimiser."""
        return list(self.generator.parameters())

    def fda_parameters(self) -> list[nn.Parameter]:
        """Learnable log τ / b (empty unless learn_tau / learn_bias): for the encoder's optimiser."""
        return list(self.fda.parameters())

    def compute(self, feats: torch.Tensor, feats_pre: torch.Tensor) -> dict[str, torch.Tensor]:
        fda, gen = self.fda, self.generator
        x, x_pre = check_feature_pair(feats, feats_pre, min_batch=3)
        b, k, q = x.shape[0], fda.k, 2 * gen.n_proxies
        if k > b - 2:
            raise ProxyFDAError(f"Proxy-FDA needs at least one non-neighbour per anchor: k={k} must be at most "
                                f"batch size − 2 = {b - 2}; lower k or raise the batch size")
        sims, sims_pre = x @ x.T, x_pre @ x_pre.T
        graph = pretrained_neighbours(sims_pre, k)
        valid = ~torch.eye(b, dtype=torch.bool, device=x.device)
        x_det, gram = x.detach(), sims.detach()

        order = graph.order
        pooled = gen.pool(gram.gather(1, order), sims_pre.gather(1, order), gen.project(x_det)[order], k)
        weights = torch.zeros(b, q, b, dtype=x.dtype, device=x.device).scatter(
            2, order[:, None, :].expand(b, q, b - 1), pooled.weights)
        twin = pooled_cosine(weights.detach(), sims_pre, sims_pre)[0]

        fda_weights = weights if self.train_generator_with_fda else weights.detach()
        anchor_rows, proxy_gram = (x @ x_det.T, gram) if self.detach_proxies else (sims, sims)
        proxy_cos = pooled_cosine(fda_weights, anchor_rows, proxy_gram)[0]
        slot_pos = (torch.arange(q, device=x.device) < gen.n_proxies).expand(b, q)
        proxy_sim = pooled.sim_est.detach() if self.proxy_similarity == "estimated" else twin
        proxy_w = self.proxy_weight * pair_weights(proxy_sim, slot_pos, fda.negative_weight)

        all_sims = torch.cat([sims, proxy_cos], 1)
        all_weights = torch.cat([pair_weights(sims_pre, graph.positive, fda.negative_weight), proxy_w], 1)
        all_pos = torch.cat([graph.positive, slot_pos], 1)
        all_valid = torch.cat([valid, torch.ones_like(slot_pos)], 1)
        tau, bias = fda.tau, fda.anchor_bias(graph)
        terms = weighted_sigmoid_loss(all_sims, all_weights, all_pos, all_valid, tau, bias, fda.reduction)
        record_pair_stats(self, all_sims, all_weights, all_pos, all_valid, tau, bias)

        gen_terms = gen.objective(weights, pooled.sim_est, twin, x_det, gram, graph.positive, valid)
        self._record_proxies(pooled, order, twin, gen_terms)
        loss = terms.loss.mean()
        return {"loss": fda.weight * loss, "fda": loss, "loss_pos": terms.pos.mean(), "loss_neg": terms.neg.mean(),
                "generator": gen_terms.loss, "manifold": gen_terms.manifold, "variance": gen_terms.variance,
                "estimate": gen_terms.estimate}

    def _record_proxies(self, pooled: PoolResult, order: torch.Tensor, twin: torch.Tensor,
                        gen_terms: GeneratorTerms) -> None:
        """Per proxy [B, 2P] (positive slots first): norm, chordal distance of the unit proxy to its
        nearest real feature, estimated and actual (pooled twin) pre-trained similarity."""
        if not self.record_stats:
            return
        p = self.generator.n_proxies
        with torch.no_grad():
            nearest = gen_terms.member_cos.detach().max(-1).values
            self.record("proxy_count", (p, p))
            self.record("proxy_norms", gen_terms.norms)
            self.record("proxy_nn_dist", (2.0 - 2.0 * nearest).clamp_min(0.0).sqrt())
            self.record("pooling_weights", pooled.weights[:_RECORD_ANCHORS])
            self.record("pooling_members", order[:_RECORD_ANCHORS])
            self.record("proxy_sim_estimated", pooled.sim_est)
            self.record("proxy_sim_actual", twin)


def _check_sets(anchor: torch.Tensor, anchor_pre: torch.Tensor, pos: torch.Tensor, pos_pre: torch.Tensor,
                neg: torch.Tensor, neg_pre: torch.Tensor) -> None:
    tensors = {"anchor": anchor, "anchor_pre": anchor_pre, "pos": pos, "pos_pre": pos_pre, "neg": neg,
               "neg_pre": neg_pre}
    for name, t in tensors.items():
        want = 2 if name.startswith("anchor") else 3
        if not isinstance(t, torch.Tensor) or t.ndim != want or not t.is_floating_point():
            raise ProxyFDAError(f"{name} must be a float tensor with {want} dims ([B, D] for anchors, [B, set size, D] "
                                f"for sets), got {getattr(t, 'shape', type(t).__name__)}")
    b, d = anchor.shape
    for name, t in tensors.items():
        if t.shape[0] != b or t.shape[-1] != d or t.shape[1:-1].numel() == 0:
            raise ProxyFDAError(f"{name} has shape {tuple(t.shape)}; expected batch {b} and feature dim {d}, with a "
                                "non-empty set; the pre-trained sets must match the fine-tuned ones member for member")
    if pos.shape != pos_pre.shape or neg.shape != neg_pre.shape:
        raise ProxyFDAError("pos/pos_pre and neg/neg_pre must have the same shapes (the same members in both spaces)")
