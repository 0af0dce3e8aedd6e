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

The generator (`proxyfda.losses.proxy_generator`) is a reconstruction: the paper publishes no code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ProxyFDAError
from ..validation import check_choice
from .base import RecordingLoss, check_feature_pair, check_number, register_regularizer
from .fda import FDALoss, pair_weights, pretrained_neighbours, record_pair_stats, weighted_sigmoid_loss
from .proxy_generator import GeneratorTerms, PoolResult, ProxyGenerator, pooled_cosine

PROXY_SIMILARITIES = ("estimated", "pooled")
#: anchors whose pooling weights are recorded
_RECORD_ANCHORS = 4


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

    Like FDA it takes the global batch in distributed training (``global_batch``): proxies pool from
    every rank's images, and each rank's generator sees the same batch and takes the same step.
    """

    global_batch = True

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
        record_pair_stats(self, all_sims, all_weights, all_pos, all_valid, tau, bias, terms)

        gen_terms = gen.objective(weights, pooled.sim_est, twin, x_det, gram, graph.positive, valid)
        self._record_proxies(pooled, order, weights, twin, gen_terms, x_det)
        loss = terms.loss.mean()
        return {"loss": fda.weight * loss, "fda": loss, "loss_pos": terms.pos.mean(), "loss_neg": terms.neg.mean(),
                "generator": gen_terms.loss, "manifold": gen_terms.manifold, "variance": gen_terms.variance,
                "estimate": gen_terms.estimate, "anchor_loss": terms.loss}

    def _record_proxies(self, pooled: PoolResult, order: torch.Tensor, weights: torch.Tensor, twin: torch.Tensor,
                        gen_terms: GeneratorTerms, feats: torch.Tensor) -> None:
        """Per proxy [B, 2P] (positive slots first): norm, chordal distance of the unit proxy to its
        nearest real feature, estimated and actual (pooled twin) pre-trained similarity; per anchor and
        side [B, 2]: the mean chordal distance between its proxies (their diversity).

        With ``record_detail``: ``proxy_pooling`` [B, 2P, B], every anchor's pooling weights over the
        batch rows, and ``proxies`` [B, 2P, D], the unit proxies themselves (fine-tuned space)."""
        if not self.record_stats:
            return
        p = self.generator.n_proxies
        with torch.no_grad():
            nearest = gen_terms.member_cos.detach().max(-1).values
            norms = gen_terms.norms.detach()
            proxy_cos = (gen_terms.member_cos.detach() @ weights.detach().transpose(1, 2)) / norms[:, None, :]
            b = proxy_cos.shape[0]
            sides = proxy_cos.view(b, 2, p, 2, p).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # [B, 2, P, P]
            # a proxy's distance to itself is 0, not the √(2ε) a float32 cosine of 1 − ε gives: leave it out
            pairs = ~torch.eye(p, dtype=torch.bool, device=sides.device)
            chordal = (2.0 - 2.0 * sides[..., pairs]).clamp_min(0.0).sqrt()
            diversity = chordal.sum(-1) / max(p * (p - 1), 1)
            self.record("proxy_count", (p, p))
            self.record("proxy_norms", norms)
            self.record("proxy_nn_dist", (2.0 - 2.0 * nearest).clamp_min(0.0).sqrt())
            self.record("proxy_diversity", diversity)
            self.record("pooling_weights", pooled.weights[:_RECORD_ANCHORS])
            self.record("pooling_members", order[:_RECORD_ANCHORS])
            self.record("proxy_sim_estimated", pooled.sim_est)
            self.record("proxy_sim_actual", twin)
            if self.record_detail:
                self.record_details(proxy_pooling=weights, proxies=(weights.detach() @ feats) / norms[..., None])

    def diagnostics(self) -> dict[str, float]:
        """Proxy health at the last call: mean distance of a proxy to its nearest real feature, mean
        distance between an anchor's same-side proxies, mean |estimated − actual| similarity."""
        r = self.records
        if "proxy_nn_dist" not in r:
            return {}
        return {"proxy_nn_dist": float(r["proxy_nn_dist"].mean()), "proxy_diversity": float(r["proxy_diversity"].mean()),
                "proxy_sim_error": float((r["proxy_sim_estimated"] - r["proxy_sim_actual"]).abs().mean())}
