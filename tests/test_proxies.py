"""ProxyGenerator and ProxyFDALoss: convex proxies from the right sets, its own training, records."""

import math

import pytest
import torch
import torch.nn.functional as F

from proxyfda.errors import ProxyFDAError
from proxyfda.losses import ProxyFDALoss, ProxyGenerator
from proxyfda.losses.proxy_generator import SequenceConv, pooled_cosine, variance_hinge

B, D, K = 12, 16, 3


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    feats_pre = torch.randn(B, D, generator=g)
    return feats_pre + 0.3 * torch.randn(B, D, generator=g), feats_pre


@pytest.fixture
def sets():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for shape in [(5, D), (5, D), (5, 3, D), (5, 3, D), (5, 7, D), (5, 7, D)]]


def test_proxies_are_convex_combinations_of_their_own_set(sets):
    anchor, anchor_pre, pos, pos_pre, neg, neg_pre = sets
    out = ProxyGenerator(n_proxies=4)(anchor, anchor_pre, pos, pos_pre, neg, neg_pre)
    for weights, members, proxies in ((out.pos_weights, pos, out.pos_proxies), (out.neg_weights, neg, out.neg_proxies)):
        assert weights.shape == (5, 4, members.shape[1])
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(5, 4))
        torch.testing.assert_close(proxies, weights @ members)
    for weights, members_pre, pooled in ((out.pos_weights, pos_pre, out.pos_sim_pooled),
                                         (out.neg_weights, neg_pre, out.neg_sim_pooled)):
        torch.testing.assert_close(pooled, F.cosine_similarity(anchor_pre[:, None], weights @ members_pre, dim=-1))
    # an untrained similarity head: the estimate is the pooling-weighted mean of the members' pre-trained cosines
    for weights, members_pre, estimate in ((out.pos_weights, pos_pre, out.pos_sim_est),
                                           (out.neg_weights, neg_pre, out.neg_sim_est)):
        cosines = F.cosine_similarity(anchor_pre[:, None], members_pre, dim=-1)  # [5, set size]
        torch.testing.assert_close(estimate, (weights * cosines[:, None, :]).sum(-1).clamp(-1, 1))


@pytest.mark.parametrize("name, change, says", [
    ("anchor", lambda t: t[0], "anchor must be a float tensor with 2 dims"),
    ("pos_pre", lambda t: t[..., 0], "pos_pre must be a float tensor with 3 dims"),
    ("neg", lambda t: t.long(), "neg must be a float tensor with 3 dims"),
    ("neg_pre", lambda t: t[:4], "neg_pre has shape (4, 7, 16); expected batch 5 and feature dim 16"),
    ("pos", lambda t: t[:, :0], "pos has shape (5, 0, 16); expected batch 5 and feature dim 16, with a non-empty set"),
    ("pos_pre", lambda t: t[:, :2], "pos/pos_pre and neg/neg_pre must have the same shapes"),
    ("neg_pre", lambda t: t[:, :6], "pos/pos_pre and neg/neg_pre must have the same shapes"),
])
def test_generator_inputs_are_checked_and_named(sets, name, change, says):
    names = ["anchor", "anchor_pre", "pos", "pos_pre", "neg", "neg_pre"]
    inputs = dict(zip(names, sets))
    inputs[name] = change(inputs[name])
    with pytest.raises(ProxyFDAError) as error:
        ProxyGenerator(n_proxies=2)(**inputs)
    assert str(error.value).startswith(says)


def test_loss_pools_positives_from_neighbours_and_negatives_from_the_rest(batch):
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, n_proxies=2)
    loss(feats, feats_pre)
    r = loss.records
    weights, members = r["pooling_weights"], r["pooling_members"]  # [4, 2P, B-1], [4, B-1]
    assert weights.shape == (4, 4, B - 1) and members.shape == (4, B - 1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 4))
    assert (weights[:, :2, K:] == 0).all() and (weights[:, 2:, :K] == 0).all()
    x_pre = F.normalize(feats_pre, dim=1)
    for i in range(4):
        sims = x_pre[i] @ x_pre.T
        sims[i] = -2
        assert set(members[i, :K].tolist()) == set(sims.topk(K).indices.tolist())
        assert i not in members[i].tolist()


def test_an_untrained_generator_estimates_the_pooled_pretrained_similarity(batch):
    """The similarity head starts at zero, so before any training the estimated similarity of a proxy is the
    pooling-weighted mean of its members' PRE-TRAINED cosines to the anchor: Σ_j a_qj cos(x̂_i, x̂_j). Fed
    the fine-tuned cosines instead, the estimate would be those of the fine-tuned space."""
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, n_proxies=2)
    loss.record_detail = True
    loss(feats, feats_pre)
    pooling = loss.records["proxy_pooling"]  # [B, 2P, B] over the batch's rows
    x_pre, x = F.normalize(feats_pre, dim=1), F.normalize(feats, dim=1)
    expected = (pooling * (x_pre @ x_pre.T)[:, None, :]).sum(-1).clamp(-1, 1)
    torch.testing.assert_close(loss.records["proxy_sim_estimated"], expected)
    wrong = (pooling * (x @ x.T)[:, None, :]).sum(-1).clamp(-1, 1)
    assert (expected - wrong).abs().max() > 1e-3  # the two spaces differ enough here to tell them apart


def test_each_proxy_sits_in_its_own_column_of_the_pair_table(batch):
    """Columns B.. of the pair table are the proxies, the P positive slots first: each column's fine-tuned
    cosine is that of the anchor with the proxy its pooling weights build, and its pair is a positive exactly
    for the first P slots."""
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, n_proxies=2)
    loss.record_detail = True
    loss(feats, feats_pre)
    r = loss.records
    x = F.normalize(feats, dim=1)
    proxies = r["proxy_pooling"] @ x  # [B, 2P, D], not yet unit
    cos = torch.einsum("bd,bqd->bq", x, proxies) / proxies.norm(dim=-1)
    torch.testing.assert_close(r["pair_sim_ft"][:, B:], cos)
    torch.testing.assert_close(r["proxies"], proxies / proxies.norm(dim=-1, keepdim=True))
    assert r["pair_positive"][:, B:].tolist() == [[True, True, False, False]] * B
    assert (r["pair_weight"][:, B:B + 2] >= 0).all() and (r["pair_weight"][:, B + 2:] <= 0).all()


def test_pooled_similarity_is_the_cosine_of_the_pooled_pretrained_twin(batch):
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, n_proxies=2, proxy_similarity="pooled")
    loss(feats, feats_pre)
    r = loss.records
    x_pre = F.normalize(feats_pre, dim=1)
    for i in range(4):
        twins = r["pooling_weights"][i] @ x_pre[r["pooling_members"][i]]
        expected = F.cosine_similarity(x_pre[i][None], twins, dim=-1)
        torch.testing.assert_close(r["proxy_sim_actual"][i], expected, rtol=1e-4, atol=1e-5)


def test_pooled_cosine_matches_explicit_pooling():
    g = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    weights = torch.rand(6, 3, 6, generator=g).softmax(-1)
    cos, norms, _ = pooled_cosine(weights, x @ x.T, x @ x.T)
    proxies = weights @ x
    torch.testing.assert_close(norms, proxies.norm(dim=-1))
    torch.testing.assert_close(cos, F.cosine_similarity(x[:, None], proxies, dim=-1))


def test_generator_trains_on_its_own_loss_and_never_touches_the_encoder(batch):
    feats, feats_pre = batch
    feats = feats.clone().requires_grad_(True)
    loss = ProxyFDALoss(k=K, n_proxies=2)
    before = [p.detach().clone() for p in loss.generator_parameters()]
    optimizer = torch.optim.Adam(loss.generator_parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        terms = loss(feats, feats_pre, return_terms=True)
        terms["generator"].backward()
        assert feats.grad is None
        optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, loss.generator_parameters()))
    loss.zero_grad()
    loss(feats, feats_pre).backward()
    assert feats.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.generator_parameters())


def test_detached_proxies_change_the_gradient_not_the_loss(batch):
    feats, feats_pre = batch
    grads, values = [], []
    for detach in (False, True):
        x = feats.clone().requires_grad_(True)
        value = ProxyFDALoss(k=K, n_proxies=2, detach_proxies=detach)(x, feats_pre)
        value.backward()
        grads.append(x.grad)
        values.append(value.item())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_records_are_filled_with_the_right_shapes(batch):
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, n_proxies=2)
    terms = loss(feats, feats_pre, return_terms=True)
    r = loss.records
    assert r["proxy_count"] == (2, 2)
    assert r["pairs_per_anchor"] == (K + 2, B - 1 - K + 2)
    for name in ("proxy_norms", "proxy_nn_dist", "proxy_sim_estimated", "proxy_sim_actual"):
        assert r[name].shape == (B, 4) and not r[name].requires_grad and r[name].device.type == "cpu"
    assert (r["proxy_norms"] <= 1 + 1e-5).all() and (r["proxy_nn_dist"] >= 0).all()
    for name in ("loss", "fda", "loss_pos", "loss_neg", "generator", "manifold", "variance", "estimate"):
        assert isinstance(r[name], float) and r[name] == pytest.approx(terms[name].item())


def test_proxy_health_records_match_the_proxies_they_describe(batch):
    """What the Proxy debugger plots, recomputed in float64 from the recorded pooling weights: each proxy's norm
    and its unit vector, its chordal distance to the nearest batch feature, the mean chordal distance between an
    anchor's same-side proxies, and its pooled pre-trained twin's cosine with the anchor. A chordal distance d
    from a float32 cosine is off by about 1e-7/d, hence the tolerances."""
    feats, feats_pre = batch
    p = 3
    loss = ProxyFDALoss(k=K, n_proxies=p)
    loss.record_detail = True
    loss(feats, feats_pre)
    r = loss.records
    x, x_pre = (torch.nn.functional.normalize(f.double(), dim=1) for f in (feats, feats_pre))
    pooling = r["proxy_pooling"].double()  # [B, 2P, B]
    raw = pooling @ x
    unit = raw / raw.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(r["proxy_norms"].double(), raw.norm(dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(r["proxies"].double(), unit, rtol=0, atol=1e-6)
    nearest = torch.cdist(unit, x.expand(B, B, D)).min(-1).values
    torch.testing.assert_close(r["proxy_nn_dist"].double(), nearest, rtol=0, atol=1e-4)
    for anchor in range(B):
        for side in range(2):
            own = unit[anchor, side * p:(side + 1) * p]
            expected = torch.cdist(own, own).sum() / (p * (p - 1))
            assert r["proxy_diversity"][anchor, side].item() == pytest.approx(expected.item(), abs=1e-5)
    twin = pooling @ x_pre
    torch.testing.assert_close(r["proxy_sim_actual"].double(), (twin * x_pre[:, None, :]).sum(-1) / twin.norm(dim=-1),
                               rtol=0, atol=1e-6)


def test_proxy_health_is_summarised_from_the_last_calls_records():
    """diagnostics (what a run logs at each evaluation): mean nearest-real distance, mean diversity, mean
    |estimated − actual| similarity, by hand from given records; nothing when the last call recorded none."""
    loss = ProxyFDALoss(k=K, n_proxies=2)
    loss.records = {"proxy_nn_dist": torch.tensor([[0.1, 0.3], [0.2, 0.4]]), "proxy_diversity": torch.tensor([0.5, 0.7]),
                    "proxy_sim_estimated": torch.tensor([[0.9, 0.1]]), "proxy_sim_actual": torch.tensor([[0.7, 0.4]])}
    assert loss.diagnostics() == pytest.approx({"proxy_nn_dist": 0.25, "proxy_diversity": 0.6,
                                                "proxy_sim_error": (0.2 + 0.3) / 2})
    loss.records = {}
    assert loss.diagnostics() == {}


@pytest.mark.parametrize("dim", [64, 1280])
def test_generator_size_does_not_depend_on_the_feature_dim(dim):
    generator = ProxyGenerator()
    count = sum(p.numel() for p in generator.parameters())
    assert 15_000 <= count <= 35_000
    loss = ProxyFDALoss(k=8)
    loss(torch.randn(64, dim), torch.randn(64, dim))
    assert sum(p.numel() for p in loss.generator_parameters()) == count


def test_variance_term_grows_when_proxies_collapse():
    g = torch.Generator().manual_seed(3)
    members = torch.randn(2, 6, 8, generator=g)
    target = members.std(dim=1, correction=0)
    diverse = members[:, :4]
    collapsed = members.mean(1, keepdim=True).expand(2, 4, 8)
    spread, together = variance_hinge(diverse, target, 0.5), variance_hinge(collapsed, target, 0.5)
    assert (together > spread).all()
    torch.testing.assert_close(together, torch.full((2,), 0.5), rtol=1e-3, atol=1e-4)


def test_too_large_k_and_bad_options_are_refused(batch):
    feats, feats_pre = batch
    with pytest.raises(ProxyFDAError, match="non-neighbour"):
        ProxyFDALoss(k=B - 1)(feats, feats_pre)
    assert torch.isfinite(ProxyFDALoss(k=B - 2)(feats, feats_pre))  # one non-neighbour per anchor is enough
    assert torch.isfinite(ProxyFDALoss(k=1)(feats[:3], feats_pre[:3]))  # the smallest batch: 3 images
    with pytest.raises(ProxyFDAError, match=r"^the batch has 2 image\(s\); this loss needs at least 3$"):
        ProxyFDALoss(k=1)(feats[:2], feats_pre[:2])
    with pytest.raises(ProxyFDAError, match="proxy_similarity"):
        ProxyFDALoss(proxy_similarity="exact")
    with pytest.raises(ProxyFDAError, match="no option"):
        ProxyFDALoss(kk=3)


def test_sequence_conv_equals_torch_conv1d():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 9, 5, generator=g)
    reference = torch.nn.Conv1d(5, 4, kernel_size=3, padding=1)
    conv = SequenceConv(5, 4, kernel_size=3)
    with torch.no_grad():
        conv.weight.copy_(reference.weight.permute(1, 2, 0).reshape(5, 12))
        conv.bias.copy_(reference.bias)
    torch.testing.assert_close(conv(x), reference(x.transpose(1, 2)).transpose(1, 2))


# ---- Proxy-FDA's loss against a brute-force reference, with pooling weights fixed by the test ----------
#
# `ProxyGenerator.pool` is replaced by a stub returning known pooling weights (over each anchor's members in
# decreasing pre-trained similarity, positives first) and known estimated similarities. The reference then
# rebuilds everything from the documentation, anchor by anchor: the pre-trained kNN sets, the per-anchor
# threshold, each proxy p = Σ a_j x_j materialised explicitly from the unit fine-tuned features, the list of
# (fine-tuned cosine, signed weight, is-positive) pairs over real members and proxies, softplus(w (b − s/τ))
# and the reduction.

RB, RD, RK, RP = 10, 6, 3, 2  # batch, dim, neighbours, proxies per side


def _fixed_pool(b, k, p, seed=5):
    """Pooling weights [B, 2P, B-1] (each slot a convex combination of its own set only) and sim_est [B, 2P]."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(b, 2 * p, b - 1, generator=g, dtype=torch.float64) + 0.05
    own = (torch.arange(2 * p) < p)[:, None] == (torch.arange(b - 1) < k)[None, :]
    weights = raw * own
    weights = weights / weights.sum(-1, keepdim=True)
    sim_est = torch.rand(b, 2 * p, generator=g, dtype=torch.float64) * 1.4 - 0.4  # some < 0: clipped on positives
    return weights, sim_est


@pytest.fixture
def stub_pool(monkeypatch):
    from proxyfda.losses.proxy_generator import PoolResult

    weights, sim_est = _fixed_pool(RB, RK, RP)
    calls = []

    def pool(self, sim_ft, sim_pre, proj, n_pos):
        calls.append((sim_ft.detach().clone(), sim_pre.detach().clone(), n_pos))
        return PoolResult(weights.to(sim_ft.dtype), sim_est.to(sim_ft.dtype))

    monkeypatch.setattr(ProxyGenerator, "pool", pool)
    return weights, sim_est, calls


@pytest.fixture
def ref_batch():
    g = torch.Generator().manual_seed(11)
    feats_pre = torch.randn(RB, RD, generator=g, dtype=torch.float64)
    feats = feats_pre + 0.8 * torch.randn(RB, RD, generator=g, dtype=torch.float64)
    return feats, feats_pre


def _signed_weight(w_hat: float, positive: bool, negative_weight: str) -> float:
    """The documented pair weight: ŵ (clipped at 0) for positives; −1, −max(ŵ, 0) or −(1 − ŵ) for negatives."""
    if positive:
        return max(w_hat, 0.0)
    return {"one": -1.0, "sim": -max(w_hat, 0.0), "one_minus_sim": -(1.0 - w_hat)}[negative_weight]


def reference_proxy_fda(feats, feats_pre, pool_weights, sim_est, *, k, p, tau, bias, threshold, negative_weight,
                        reduction, proxy_similarity, proxy_weight, weight, detach_proxies):
    """(loss, loss_pos, loss_neg) of Proxy-FDA, pair by pair (torch scalars, so gradients can be compared)."""
    x = feats / feats.norm(dim=1, keepdim=True)
    xp = (feats_pre / feats_pre.norm(dim=1, keepdim=True)).detach()
    members_x = x.detach() if detach_proxies else x
    b = len(x)
    totals, pos_parts, neg_parts = [], [], []
    for i in range(b):
        pre = {j: float(xp[i] @ xp[j]) for j in range(b) if j != i}
        others = sorted(pre, key=lambda j: -pre[j])
        neighbours = set(others[:k])
        bi = bias if threshold == "fixed" else bias + 0.5 * (pre[others[k - 1]] + pre[others[k]]) / tau
        pairs = []  # (fine-tuned cosine, signed weight, is positive)
        for j in others:
            pairs.append((x[i] @ x[j], _signed_weight(pre[j], j in neighbours, negative_weight), j in neighbours))
        for q in range(2 * p):
            a = pool_weights[i, q]
            proxy = sum(a[s] * members_x[j] for s, j in enumerate(others))
            twin = sum(a[s] * xp[j] for s, j in enumerate(others))
            cos = x[i] @ proxy / proxy.norm()
            w_hat = float(sim_est[i, q]) if proxy_similarity == "estimated" else float(xp[i] @ twin / twin.norm())
            pairs.append((cos, proxy_weight * _signed_weight(w_hat, q < p, negative_weight), q < p))
        terms = [(F.softplus(torch.as_tensor(w, dtype=x.dtype) * (bi - s / tau)), is_pos) for s, w, is_pos in pairs]
        pos = [t for t, is_pos in terms if is_pos]
        neg = [t for t, is_pos in terms if not is_pos]
        assert len(pos) == k + p and len(neg) == b - 1 - k + p
        if reduction == "paper":
            pos_part, neg_part = sum(pos) / len(terms), sum(neg) / len(terms)
        else:
            pos_part, neg_part = sum(pos) / len(pos), sum(neg) / len(neg)
        totals.append(pos_part + neg_part)
        pos_parts.append(pos_part)
        neg_parts.append(neg_part)
    return weight * sum(totals) / b, sum(pos_parts) / b, sum(neg_parts) / b


REF_OPTIONS = dict(k=RK, n_proxies=RP, tau=0.2, bias=0.3, threshold="knn", negative_weight="one_minus_sim",
                   reduction="balanced", proxy_similarity="estimated", proxy_weight=1.0, weight=1.5,
                   detach_proxies=False)


# τ and b live in float32 buffers, so the loss agrees with the float64 reference to ~1e-8, not to machine precision


def _run(feats, feats_pre, **options):
    loss = ProxyFDALoss(**options)
    return loss(feats, feats_pre, return_terms=True)


def _reference(feats, feats_pre, stub_pool, options):
    weights, sim_est, _ = stub_pool
    ref_options = {("p" if name == "n_proxies" else name): v for name, v in options.items()}
    return reference_proxy_fda(feats, feats_pre, weights, sim_est, **ref_options)


@pytest.mark.parametrize("proxy_similarity", ["estimated", "pooled"])
@pytest.mark.parametrize("reduction", ["balanced", "paper"])
@pytest.mark.parametrize("negative_weight", ["one", "sim", "one_minus_sim"])
def test_proxy_fda_loss_matches_brute_force_reference(stub_pool, ref_batch, negative_weight, reduction,
                                                      proxy_similarity):
    """loss, loss_pos and loss_neg equal the pair-by-pair definition with explicitly built proxies."""
    feats, feats_pre = ref_batch
    options = {**REF_OPTIONS, "negative_weight": negative_weight, "reduction": reduction,
               "proxy_similarity": proxy_similarity, "proxy_weight": 0.4}
    terms = _run(feats, feats_pre, **options)
    loss, pos, neg = _reference(feats, feats_pre, stub_pool, options)
    assert terms["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert terms["fda"].item() == pytest.approx(loss.item() / options["weight"], rel=1e-6)
    assert terms["loss_pos"].item() == pytest.approx(pos.item(), rel=1e-6)
    assert terms["loss_neg"].item() == pytest.approx(neg.item(), rel=1e-6)


def test_proxy_fda_fixed_threshold_matches_reference(stub_pool, ref_batch):
    feats, feats_pre = ref_batch
    options = {**REF_OPTIONS, "threshold": "fixed", "bias": 4.0}
    terms = _run(feats, feats_pre, **options)
    loss, pos, neg = _reference(feats, feats_pre, stub_pool, options)
    assert (terms["loss"].item(), terms["loss_pos"].item(), terms["loss_neg"].item()) == pytest.approx(
        (loss.item(), pos.item(), neg.item()), rel=1e-6)


def test_the_stub_pool_sees_members_in_decreasing_pretrained_similarity(stub_pool, ref_batch):
    """What the generator pools over: each anchor's others by decreasing pre-trained cosine, K positives first."""
    feats, feats_pre = ref_batch
    _run(feats, feats_pre, **REF_OPTIONS)
    (sim_ft, sim_pre, n_pos), = stub_pool[2]
    assert n_pos == RK and sim_pre.shape == (RB, RB - 1)
    xp = F.normalize(feats_pre, dim=1)
    x = F.normalize(feats, dim=1)
    for i in range(RB):
        pre = xp[i] @ xp.T
        pre[i] = -math.inf
        order = pre.argsort(descending=True)[:-1]
        torch.testing.assert_close(sim_pre[i], pre[order])
        torch.testing.assert_close(sim_ft[i], x[i] @ x[order].T)


def test_proxy_weight_and_similarity_choice_change_the_loss(stub_pool, ref_batch):
    """proxy_weight = 0 leaves plain FDA over the real pairs (balanced: proxies still count in the means);
    "pooled" and "estimated" give different losses when the estimate is off."""
    feats, feats_pre = ref_batch
    values = {}
    for similarity in ("estimated", "pooled"):
        for pw in (0.0, 0.4, 1.0):
            values[similarity, pw] = _run(feats, feats_pre, **{**REF_OPTIONS, "proxy_similarity": similarity,
                                                               "proxy_weight": pw})["loss"].item()
    assert values["estimated", 0.0] == pytest.approx(values["pooled", 0.0], rel=1e-12)
    assert values["estimated", 1.0] != pytest.approx(values["pooled", 1.0], rel=1e-3)
    assert len({round(values["estimated", pw], 9) for pw in (0.0, 0.4, 1.0)}) == 3


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_match_the_reference_with_and_without_detached_proxies(stub_pool, ref_batch, detach):
    """detach_proxies=True: proxies are fixed targets (built from detached members), so only the anchor
    gets gradient from a proxy pair; False: the members pooled into a proxy get gradient too."""
    feats, feats_pre = ref_batch
    options = {**REF_OPTIONS, "detach_proxies": detach, "negative_weight": "one", "reduction": "paper"}
    x = feats.clone().requires_grad_(True)
    _run(x, feats_pre, **options)["loss"].backward()
    x_ref = feats.clone().requires_grad_(True)
    _reference(x_ref, feats_pre, stub_pool, options)[0].backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-8)
    # and the two settings really differ in what flows
    x_other = feats.clone().requires_grad_(True)
    _reference(x_other, feats_pre, stub_pool, {**options, "detach_proxies": not detach})[0].backward()
    assert not torch.allclose(x_ref.grad, x_other.grad)


def test_detached_proxy_terms_give_members_no_gradient(stub_pool, ref_batch):
    """detach_proxies: the proxy pairs' gradient (loss at proxy_weight 1 minus at 0: the real pairs and the
    pair counts are the same) reaches each row only as an anchor. Row i's share must equal the gradient of
    anchor i's own proxy terms with every other row held constant; without detaching it does not."""
    feats, feats_pre = ref_batch
    proxy_grad = {}
    for detach in (False, True):
        grads = []
        for pw in (1.0, 0.0):
            x = feats.clone().requires_grad_(True)
            _run(x, feats_pre, **{**REF_OPTIONS, "detach_proxies": detach, "proxy_weight": pw})["loss"].backward()
            grads.append(x.grad)
        proxy_grad[detach] = grads[0] - grads[1]
    expected = torch.zeros_like(feats)
    for i in range(RB):
        row = feats[i].clone().requires_grad_(True)
        x = torch.cat([feats[:i], row[None], feats[i + 1:]])  # only row i is a leaf
        on, off = (_reference(x, feats_pre, stub_pool, {**REF_OPTIONS, "detach_proxies": True, "proxy_weight": pw})[0]
                   for pw in (1.0, 0.0))
        (on - off).backward()
        expected[i] = row.grad
    assert expected.abs().sum() > 0
    torch.testing.assert_close(proxy_grad[True], expected, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(proxy_grad[False], expected)


@pytest.mark.parametrize("train_with_fda", [False, True])
def test_the_encoders_loss_reaches_the_generator_only_when_asked(batch, train_with_fda):
    """METHOD.md: by default L_ProxyFDA does not train the generator (it would make proxies easy to satisfy);
    ``train_generator_with_fda`` lets its gradient through."""
    feats, feats_pre = batch
    loss = ProxyFDALoss(k=K, train_generator_with_fda=train_with_fda)
    terms = loss(feats.requires_grad_(True), feats_pre, return_terms=True)
    params = list(loss.generator_parameters())
    grads = torch.autograd.grad(terms["fda"], params, allow_unused=True)
    reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert reached == train_with_fda
