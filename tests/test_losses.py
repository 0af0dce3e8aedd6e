"""FDALoss against a hand computation, its gradients, its minimum, and the regulariser registry."""

import math

import pytest
import torch

from proxyfda.errors import ProxyFDAError
from proxyfda.losses import FDALoss, RecordingLoss, build_regularizer, list_regularizers


def _unit(row):
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def _cos(a, b):
    return sum(u * v for u, v in zip(a, b))


def _softplus(z):
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def hand_fda(feats, feats_pre, k, tau, bias, threshold, negative_weight, reduction):
    """The FDA definition written out pair by pair in plain Python."""
    x = [_unit(r) for r in feats.tolist()]
    xp = [_unit(r) for r in feats_pre.tolist()]
    n = len(x)
    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -_cos(xp[i], xp[j]))
        neighbours = set(others[:k])
        ranked = [_cos(xp[i], xp[j]) for j in others]
        b = bias if threshold == "fixed" else bias + 0.5 * (ranked[k - 1] + ranked[k]) / tau
        pos_sum = neg_sum = 0.0
        for j in others:
            w_hat = _cos(xp[i], xp[j])
            if j in neighbours:
                w = max(w_hat, 0.0)
            else:
                w = {"one": -1.0, "sim": -max(w_hat, 0.0), "one_minus_sim": -(1.0 - w_hat)}[negative_weight]
            term = _softplus(w * (b - _cos(x[i], x[j]) / tau))
            if j in neighbours:
                pos_sum += term
            else:
                neg_sum += term
        if reduction == "paper":
            total += (pos_sum + neg_sum) / (n - 1)
        else:
            total += pos_sum / k + neg_sum / (n - 1 - k)
    return total / n


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)


@pytest.mark.parametrize("threshold,bias", [("fixed", 2.0), ("knn", 0.5)])
@pytest.mark.parametrize("reduction", ["paper", "balanced"])
@pytest.mark.parametrize("negative_weight", ["one", "sim", "one_minus_sim"])
def test_fda_matches_hand_computation(tiny, negative_weight, reduction, threshold, bias):
    feats, feats_pre = tiny
    loss = FDALoss(k=2, tau=0.2, bias=bias, threshold=threshold, negative_weight=negative_weight,
                   reduction=reduction, weight=1.0)(feats, feats_pre)
    expected = hand_fda(feats, feats_pre, 2, 0.2, bias, threshold, negative_weight, reduction)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_weight_scales_the_loss_and_terms_are_returned(tiny):
    feats, feats_pre = tiny
    plain = FDALoss(k=2)(feats, feats_pre)
    terms = FDALoss(k=2, weight=3.0)(feats, feats_pre, return_terms=True)
    assert terms["loss"].item() == pytest.approx(3.0 * plain.item(), rel=1e-6)
    assert terms["fda"].item() == pytest.approx(plain.item(), rel=1e-6)
    assert terms["fda"].item() == pytest.approx((terms["loss_pos"] + terms["loss_neg"]).item(), rel=1e-6)


def test_gradient_reaches_finetuned_features_only(tiny):
    feats, feats_pre = (t.clone().requires_grad_(True) for t in tiny)
    FDALoss(k=2)(feats, feats_pre).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert feats_pre.grad is None


def _two_clusters(noise=0.02, seed=0):
    """Six points in two tight, mutually orthogonal clusters of three (K=2 neighbours = own cluster)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    return centres.repeat_interleave(3, 0) + noise * torch.randn(6, 4, generator=g)


def test_identical_separated_spaces_sit_near_the_minimum_zero():
    # The loss is a sum of softplus terms, so 0 is its infimum, approached when every neighbour is far
    # above the threshold b·τ and every non-neighbour far below. Two orthogonal clusters with b·τ = 0.5
    # give margins of ~0.5 = 5τ, so identical spaces cost about softplus(-5) per pair; mixing the
    # clusters in the fine-tuned space must cost far more.
    x = _two_clusters()
    fda = FDALoss(k=2, tau=0.1, bias=5.0, threshold="fixed", negative_weight="one", reduction="balanced")
    identical = fda(x, x).item()
    assert identical < 2 * _softplus(-4.0)
    mixed = x[[0, 3, 1, 4, 2, 5]]
    assert fda(mixed, x).item() > 1.0


def test_loss_only_sees_cosines_so_rotation_and_scale_of_the_finetuned_space_cost_nothing(tiny):
    feats, feats_pre = tiny
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    fda = FDALoss(k=2)
    assert fda(3.0 * feats @ rotation, feats_pre).item() == pytest.approx(fda(feats, feats_pre).item(), rel=1e-5)


def test_knn_threshold_puts_identical_spaces_on_the_right_side_of_every_pair():
    # threshold="knn", bias=0: θ_i lies between the K-th and (K+1)-th pre-trained similarity, so with
    # identical spaces every pair has w·(b − s/τ) ≤ 0, i.e. costs at most log 2, whatever the data.
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    terms = FDALoss(k=4, threshold="knn", bias=0.0, reduction="balanced")(x, x, return_terms=True)
    assert terms["loss_pos"].item() <= math.log(2) + 1e-6
    assert terms["loss_neg"].item() <= math.log(2) + 1e-6


def test_k_must_be_smaller_than_the_batch(tiny):
    feats, feats_pre = tiny
    with pytest.raises(ProxyFDAError, match="k=6"):
        FDALoss(k=6)(feats, feats_pre)


def test_bad_inputs_are_refused_with_a_clear_error(tiny):
    feats, feats_pre = tiny
    with pytest.raises(ProxyFDAError, match="same shape"):
        FDALoss(k=2)(feats, feats_pre[:5])
    with pytest.raises(ProxyFDAError, match="NaN"):
        FDALoss(k=2)(feats.index_fill(0, torch.tensor([1]), math.nan), feats_pre)
    with pytest.raises(ProxyFDAError, match="negative_weight"):
        FDALoss(negative_weight="minus")
    with pytest.raises(ProxyFDAError, match="tau"):
        FDALoss(tau=0.0)


def test_learnable_tau_and_bias_get_gradients(tiny):
    feats, feats_pre = tiny
    fda = FDALoss(k=2, learn_tau=True, learn_bias=True)
    assert {name for name, _ in fda.named_parameters()} == {"log_tau", "bias"}
    fda(feats, feats_pre).backward()
    assert fda.log_tau.grad.abs().item() > 0 and fda.bias.grad.abs().item() > 0
    assert list(FDALoss(k=2).parameters()) == []


def test_records_describe_the_pairs(tiny):
    feats, feats_pre = tiny
    fda = FDALoss(k=2, tau=0.2, bias=1.0, threshold="fixed")
    fda(feats, feats_pre)
    r = fda.records
    assert r["pairs_per_anchor"] == (2, 3)
    for name in ("pos_sim_ft", "neg_sim_ft", "pos_weight_mean", "loss_pos", "loss_neg"):
        assert isinstance(r[name], float) and math.isfinite(r[name])
    assert r["tau"] == pytest.approx(0.2) and r["bias"] == pytest.approx(1.0)
    assert r["pos_weight_mean"] > 0


def test_registry_lists_and_builds_every_regulariser():
    assert list_regularizers() == ["fda", "l2sp", "ldifs", "ldifs-final", "proxy-fda"]  # naive adds none
    fda = build_regularizer("fda", k=4, tau=0.05)
    assert isinstance(fda, FDALoss) and isinstance(fda, RecordingLoss) and fda.k == 4
    assert build_regularizer("proxy-fda", k=4, n_proxies=2).fda.k == 4
    with pytest.raises(ProxyFDAError, match="unknown regulariser"):
        build_regularizer("fdaa")
    with pytest.raises(ProxyFDAError, match="no option"):
        build_regularizer("fda", kk=4)
    with pytest.raises(ProxyFDAError, match="no option"):
        build_regularizer("proxy-fda", kk=4)
    with pytest.raises(ProxyFDAError, match="reference_state"):
        build_regularizer("l2sp")


def test_a_regulariser_registered_as_a_function_takes_its_keywords():
    """A factory function (not a RecordingLoss class) is checked against its own keyword arguments."""
    from proxyfda.losses import REGULARIZERS, register_regularizer

    @register_regularizer("scaled-fda")
    def scaled_fda(k: int = 4, scale: float = 1.0) -> FDALoss:
        return FDALoss(k=k, weight=scale)

    try:
        assert build_regularizer("scaled-fda", k=3, scale=0.5).weight == 0.5
        with pytest.raises(ProxyFDAError) as refused:
            build_regularizer("scaled-fda", tau=0.1)
        assert str(refused.value) == "regulariser 'scaled-fda' has no option(s) tau; it accepts: k, scale"
    finally:
        REGULARIZERS.pop("scaled-fda", None)


# ---- pair_weights: hand-written matrices for every negative_weight option --------------------------------

from proxyfda.losses.fda import pair_weights, pretrained_neighbours  # noqa: E402

#: pre-trained similarities covering positive, zero and negative values on both sides of the graph
PAIR_SIMS = torch.tensor([[0.9, -0.2, 0.5],
                          [0.3, 0.0, -0.6],
                          [-0.4, 0.7, 1.0]])
PAIR_POSITIVE = torch.tensor([[True, True, False],
                              [False, True, True],
                              [True, False, False]])


@pytest.mark.parametrize("negative_weight, expected", [
    # positives: ŵ clipped at 0 (no pull for ŵ <= 0); negatives: -1
    ("one", [[0.9, 0.0, -1.0],
             [-1.0, 0.0, 0.0],
             [0.0, -1.0, -1.0]]),
    # negatives: -max(ŵ, 0), never a pull
    ("sim", [[0.9, 0.0, -0.5],
             [-0.3, 0.0, 0.0],
             [0.0, -0.7, -1.0]]),
    # negatives: -(1 - ŵ), unclipped
    ("one_minus_sim", [[0.9, 0.0, -0.5],
                       [-0.7, 0.0, 0.0],
                       [0.0, -0.3, 0.0]]),
])
def test_pair_weights_hand_matrices(negative_weight, expected):
    weights = pair_weights(PAIR_SIMS, PAIR_POSITIVE, negative_weight)
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_pair_weights_one_minus_sim_of_a_negative_similarity_pushes_harder_than_one():
    sims = torch.tensor([[-0.5, 0.25]])
    weights = pair_weights(sims, torch.tensor([[False, False]]), "one_minus_sim")
    torch.testing.assert_close(weights, torch.tensor([[-1.5, -0.75]]))


def test_pretrained_neighbours_hand_example():
    """order, positives and the per-anchor kNN boundary (midpoint of the K-th and (K+1)-th similarity)."""
    sims = torch.tensor([[1.0, 0.8, 0.1, 0.5],
                         [0.8, 1.0, 0.3, 0.2],
                         [0.1, 0.3, 1.0, 0.6],
                         [0.5, 0.2, 0.6, 1.0]])
    graph = pretrained_neighbours(sims, 2)
    assert graph.order.tolist() == [[1, 3, 2], [0, 2, 3], [3, 1, 0], [2, 0, 1]]
    assert graph.positive.tolist() == [[False, True, False, True], [True, False, True, False],
                                       [False, True, False, True], [True, False, True, False]]
    torch.testing.assert_close(graph.boundary, torch.tensor([0.3, 0.25, 0.2, 0.35]))
    # K = B − 1: no (K+1)-th, the boundary is the K-th similarity itself
    torch.testing.assert_close(pretrained_neighbours(sims, 3).boundary, torch.tensor([0.1, 0.2, 0.1, 0.2]))


def test_presets_set_the_defaults_and_explicit_options_win():
    """"ours" (per-anchor kNN threshold, balanced sides) is the default; "paper" is the paper's form
    (fixed threshold, 1/(B−1) sum); an option given explicitly overrides its preset."""
    from proxyfda.losses.fda import FDA_PRESETS

    ours, paper = FDALoss(), FDALoss(preset="paper")
    assert (ours.threshold, ours.reduction, float(ours.bias)) == ("knn", "balanced", 0.0)
    assert (paper.threshold, paper.reduction, float(paper.bias)) == ("fixed", "paper", 5.0)
    assert FDALoss(preset="paper", reduction="balanced").reduction == "balanced"
    assert build_regularizer("proxy-fda", preset="paper", n_proxies=2).fda.threshold == "fixed"
    x, x_pre = torch.randn(12, 5), torch.randn(12, 5)
    explicit = FDALoss(k=3, **FDA_PRESETS["paper"])
    assert FDALoss(k=3, preset="paper")(x, x_pre).item() == pytest.approx(explicit(x, x_pre).item())
    assert FDALoss(k=3, preset="paper")(x, x_pre).item() != pytest.approx(FDALoss(k=3)(x, x_pre).item())
    with pytest.raises(ProxyFDAError, match="unknown preset 'papr'"):
        FDALoss(preset="papr")


# three anchors, three others each: anchor 0 has one valid positive and one valid negative, anchor 1 two
# positives and no negative, anchor 2 a single valid pair (a negative); τ = 0.5 and one bias per anchor
PAIRS = dict(sims=[[0.9, 0.2, -0.1], [0.5, 0.4, 0.3], [0.1, 0.3, 0.0]],
             weights=[[0.8, -1.0, -0.5], [0.6, 0.7, -1.0], [0.5, -1.0, -1.0]],
             positive=[[True, False, False], [True, True, False], [False, False, False]],
             valid=[[True, True, False], [True, True, False], [False, True, False]])
PAIR_TAU, PAIR_BIAS = 0.5, [1.0, 2.0, 0.5]


def hand_pair_terms(reduction):
    """Per anchor (positive part, negative part) of softplus(w · (b − s/τ)), written out pair by pair."""
    out = []
    for i, b in enumerate(PAIR_BIAS):
        pos, neg = [], []
        for s, w, p, v in zip(*(PAIRS[name][i] for name in ("sims", "weights", "positive", "valid"))):
            if v:
                (pos if p else neg).append(_softplus(w * (b - s / PAIR_TAU)))
        if reduction == "paper":
            out.append((sum(pos) / (len(pos) + len(neg)), sum(neg) / (len(pos) + len(neg))))
        else:
            out.append((sum(pos) / max(len(pos), 1), sum(neg) / max(len(neg), 1)))
    return out


def pair_tensors():
    sims, weights = (torch.tensor(PAIRS[name]) for name in ("sims", "weights"))
    positive, valid = (torch.tensor(PAIRS[name]) for name in ("positive", "valid"))
    return sims, weights, positive, valid, torch.tensor(PAIR_TAU), torch.tensor(PAIR_BIAS).reshape(-1, 1)


@pytest.mark.parametrize("reduction", ["paper", "balanced"])
def test_sigmoid_terms_per_anchor_match_a_hand_computation(reduction):
    from proxyfda.losses.fda import weighted_sigmoid_loss

    terms = weighted_sigmoid_loss(*pair_tensors(), reduction=reduction)
    expected = hand_pair_terms(reduction)
    assert terms.pos.tolist() == pytest.approx([p for p, _ in expected], rel=1e-6)
    assert terms.neg.tolist() == pytest.approx([n for _, n in expected], rel=1e-6)
    assert terms.loss.tolist() == pytest.approx([p + n for p, n in expected], rel=1e-6)


def test_pair_records_are_the_pairs_and_anchor_zeros_counts():
    from proxyfda.losses.fda import record_pair_stats, weighted_sigmoid_loss

    sims, weights, positive, valid, tau, bias = pair_tensors()
    terms = weighted_sigmoid_loss(sims, weights, positive, valid, tau, bias, reduction="balanced")
    loss = FDALoss()
    loss.record_detail = True
    record_pair_stats(loss, sims, weights, positive, valid, tau, bias, terms)
    r = loss.records
    for name, key in [("pair_sim_ft", "sims"), ("pair_weight", "weights"), ("pair_positive", "positive"),
                      ("pair_valid", "valid")]:
        torch.testing.assert_close(r[name], torch.tensor(PAIRS[key]))
    assert r["anchor_threshold"].tolist() == pytest.approx([b * PAIR_TAU for b in PAIR_BIAS])
    assert r["anchor_loss_pos"].tolist() == pytest.approx([p for p, _ in hand_pair_terms("balanced")], rel=1e-6)
    assert r["anchor_loss_neg"].tolist() == pytest.approx([n for _, n in hand_pair_terms("balanced")], rel=1e-6)
    assert r["pairs_per_anchor"] == (1, 1)  # anchor 0's valid positives and negatives (anchor 1 has 2 and 0)
    assert r["pos_sim_ft"] == pytest.approx((0.9 + 0.5 + 0.4) / 3)
    assert r["neg_sim_ft"] == pytest.approx((0.2 + 0.3) / 2)
    assert r["pos_weight_mean"] == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    assert r["neg_weight_mean"] == pytest.approx(-1.0)
    record_pair_stats(loss, sims, weights, positive, positive, tau, bias, terms)  # no valid negative anywhere
    assert math.isnan(loss.records["neg_sim_ft"]) and math.isnan(loss.records["neg_weight_mean"])
    assert (r["tau"], r["bias"]) == pytest.approx((0.5, (1.0 + 2.0 + 0.5) / 3))
    assert r["threshold"] == pytest.approx(PAIR_TAU * (1.0 + 2.0 + 0.5) / 3)


@pytest.mark.parametrize("option, says", [
    (dict(k=0), "k must be an integer >= 1, got 0"),
    (dict(threshold="x"), "unknown threshold 'x'; choose one of 'fixed', 'knn'"),
    (dict(negative_weight="x"), "unknown negative_weight 'x'; choose one of 'one', 'sim', 'one_minus_sim'"),
    (dict(reduction="x"), "unknown reduction 'x'; choose one of 'paper', 'balanced'"),
    (dict(weight=-1), "weight (λ) must be >= 0.0, got -1"),
    (dict(tau=0), "tau must be > 0.0, got 0"),
    (dict(bias=math.nan), "bias must be a finite number, got nan"),
    (dict(preset="x"), "unknown preset 'x'; choose one of 'ours', 'paper'"),
])
def test_each_refused_fda_option_is_named_in_its_message(option, says):
    with pytest.raises(ProxyFDAError) as refused:
        FDALoss(**option)
    assert str(refused.value) == says


def test_fda_defaults_and_the_strengths_it_accepts():
    """K = 8 and τ = 0.1 by default (METHOD.md), λ = 1; any λ ≥ 0 is a strength (0 turns the term off)."""
    loss = FDALoss()
    assert (loss.k, loss.tau.item(), loss.weight) == (8, pytest.approx(0.1), 1.0)
    assert [FDALoss(weight=w).weight for w in (0.0, 0.5)] == [0.0, 0.5]


def test_neighbours_are_found_on_the_device_of_the_similarities():
    """The meta device stands in for a GPU: the self-mask must be made where the similarities are."""
    from proxyfda.losses.fda import pretrained_neighbours

    graph = pretrained_neighbours(torch.empty(6, 6, device="meta"), 2)
    assert graph.positive.device.type == graph.order.device.type == "meta"
