"""ProxyGenerator and ProxyFDALoss: convex proxies from the right sets, its own training, records."""

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
    pooled_pre = out.pos_weights @ pos_pre
    torch.testing.assert_close(out.pos_sim_pooled, F.cosine_similarity(anchor_pre[:, None], pooled_pre, dim=-1))


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
