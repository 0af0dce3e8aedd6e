"""The proxy generator of Proxy-FDA: a small network that pools an anchor's real neighbours and
non-neighbours into synthetic features (proxies).

**A reconstruction.** The paper describes the generator (one attention layer and two convolutions,
about 23.6K parameters, softmax-weighted pooling, an estimated similarity per proxy) but publishes
no code; the descriptors, layer sizes and the generator's own loss here are this project's choices,
documented in docs/METHOD.md.

Everything about a proxy is computed from [B, B] cosine matrices: a proxy p = Σ_j a_j x_j has
x_i·p = Σ_j a_j (x_i·x_j) and |p|² = aᵀ G a with G the batch's Gram matrix, so no D-wide work is
needed except for the generator's variance term.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProxyFDAError
from .base import check_int, check_number, unit_rows

#: per-member scalar descriptors: pre-trained cos, fine-tuned cos, their difference, rank, is-positive
_SCALAR_DESCRIPTORS = 5


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
        # einsum reads upper-case subscripts as it reads lower-case ones: these strings' case mutants are equivalent
        # pragma: no mutate start
        sim_ft = torch.einsum("bd,bsd->bs", unit_rows(anchor.detach()), unit_members)
        sim_pre = torch.einsum("bd,bsd->bs", unit_rows(anchor_pre.detach()), unit_rows(members_pre.detach()))
        # pragma: no mutate end
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
