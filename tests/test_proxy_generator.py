"""The proxy generator's network and its own loss against references written member by member.

`ProxyGenerator` computes everything batched ([B, S] descriptors, one attention over [B, 2P, S], the objective
from [B, B] Gram matrices). The references below follow its docstrings one anchor, one member and one proxy at
a time in float64, with every layer's weights random (the similarity head too, which starts at zero), so a
swapped descriptor, a wrong mask or a dropped term changes a number they compare.
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from proxyfda.errors import ProxyFDAError
from proxyfda.losses import ProxyFDALoss, ProxyGenerator
from proxyfda.losses.proxy_generator import manifold_infonce, variance_hinge

B, S, N_POS, P, H, PROJ = 3, 7, 3, 2, 8, 4


def _generator(**options) -> ProxyGenerator:
    """A float64 generator whose similarity head is random too (it is initialised at zero)."""
    gen = ProxyGenerator(**{"n_proxies": P, "hidden": H, "proj_dim": PROJ, **options}).double()
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        gen.sim_head.weight.copy_(torch.randn(gen.sim_head.weight.shape, generator=g, dtype=torch.float64) * 3.0)
        gen.sim_head.bias.fill_(-0.6)
    return gen


def _conv(x: torch.Tensor, conv) -> torch.Tensor:
    """'same' convolution over members by its definition: out[s] = bias + Σ_t x[s + t − half] · W_t."""
    size, out_channels = conv.kernel_size, conv.out_channels
    out = []
    for s in range(len(x)):
        value = conv.bias.clone()
        for t in range(size):
            source = s + t - size // 2
            if 0 <= source < len(x):
                value = value + x[source] @ conv.weight[:, t * out_channels:(t + 1) * out_channels]
        out.append(value)
    return torch.stack(out)


def reference_pool(gen: ProxyGenerator, sim_ft, sim_pre, proj, n_pos):
    """(weights [B, 2P, S], sim_est [B, 2P]) anchor by anchor, as ProxyGenerator's docstring describes them."""
    b, s = sim_ft.shape
    p, hidden = gen.n_proxies, gen.hidden
    weights, estimates = torch.zeros(b, 2 * p, s, dtype=torch.float64), torch.zeros(b, 2 * p, dtype=torch.float64)
    for i in range(b):
        rows = []
        for m in range(s):
            scalars = [sim_pre[i, m], sim_ft[i, m], sim_ft[i, m] - sim_pre[i, m], m / (s - 1), float(m < n_pos)]
            rows.append(torch.cat([torch.tensor(scalars, dtype=torch.float64), proj[i, m]]))
        tokens = F.relu(_conv(F.relu(_conv(torch.stack(rows), gen.conv1)), gen.conv2))  # [S, H]
        context = torch.cat([tokens[:n_pos].mean(0), tokens[n_pos:].mean(0)])
        queries = gen.slots + (gen.query.weight @ context + gen.query.bias).view(2 * p, hidden)
        keys = tokens @ gen.key.weight.T  # each member's key, the key map applied to its token
        for q in range(2 * p):
            own = [m for m in range(s) if (m < n_pos) == (q < p)]
            logits = torch.stack([queries[q] @ keys[m] for m in own]) / math.sqrt(hidden)
            for m, a in zip(own, logits.softmax(0)):
                weights[i, q, m] = a
            pooled_token = sum(weights[i, q, m] * tokens[m] for m in own)
            base = sum(weights[i, q, m] * sim_pre[i, m] for m in own)
            head = gen.sim_head.weight[0] @ pooled_token + gen.sim_head.bias[0]
            estimates[i, q] = (base + head).clamp(-1.0, 1.0)
    return weights, estimates


def _descriptor_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    sim_ft = torch.rand(B, S, generator=g, dtype=torch.float64) * 2 - 1
    sim_pre = torch.rand(B, S, generator=g, dtype=torch.float64) * 2 - 1
    proj = torch.randn(B, S, PROJ, generator=g, dtype=torch.float64)
    return sim_ft, sim_pre, proj


def test_pooling_and_estimates_match_a_member_by_member_reference():
    gen = _generator()
    sim_ft, sim_pre, proj = _descriptor_inputs()
    pooled = gen.pool(sim_ft, sim_pre, proj, N_POS)
    weights, estimates = reference_pool(gen, sim_ft, sim_pre, proj, N_POS)
    torch.testing.assert_close(pooled.weights, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.sim_est, estimates, rtol=0, atol=1e-12)
    # the case exercises the clamp at both ends and leaves some estimates inside it
    assert (estimates == 1).any() and (estimates == -1).any() and (estimates.abs() < 1).any()


@pytest.mark.parametrize("n_pos", [1, S - 1])
def test_pooling_with_a_single_member_on_one_side(n_pos):
    """A set of one member: its slots put all their weight on it (and the context is that member's token)."""
    gen = _generator()
    sim_ft, sim_pre, proj = _descriptor_inputs(seed=4)
    pooled = gen.pool(sim_ft, sim_pre, proj, n_pos)
    weights, estimates = reference_pool(gen, sim_ft, sim_pre, proj, n_pos)
    torch.testing.assert_close(pooled.weights, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.sim_est, estimates, rtol=0, atol=1e-12)
    single = slice(0, P) if n_pos == 1 else slice(P, 2 * P)
    member = 0 if n_pos == 1 else S - 1
    assert (pooled.weights[:, single, member] == 1).all()


@pytest.mark.parametrize("n_pos", [0, S])
def test_pooling_needs_members_on_both_sides(n_pos):
    sim_ft, sim_pre, proj = _descriptor_inputs()
    with pytest.raises(ProxyFDAError, match=f"^each anchor needs at least one positive and one negative member, "
                                            f"got {n_pos} positives among {S} members"):
        _generator().pool(sim_ft, sim_pre, proj, n_pos)


def test_forward_describes_members_by_their_cosines_and_the_projection_of_their_unit_features(monkeypatch):
    """What `forward` hands to `pool`: the members (positives, then negatives) described by their cosine to the
    anchor in each space (scale-free) and by the fixed projection of their unit fine-tuned features."""
    g = torch.Generator().manual_seed(5)
    anchor, anchor_pre = torch.randn(B, 6, generator=g) * 3, torch.randn(B, 6, generator=g)
    pos, pos_pre = torch.randn(B, 2, 6, generator=g) * 2, torch.randn(B, 2, 6, generator=g)
    neg, neg_pre = torch.randn(B, 4, 6, generator=g) * 5, torch.randn(B, 4, 6, generator=g)
    gen = ProxyGenerator(n_proxies=P, hidden=H, proj_dim=PROJ)
    seen = []
    original = ProxyGenerator.pool
    monkeypatch.setattr(ProxyGenerator, "pool", lambda self, *args: seen.append(args) or original(self, *args))
    gen(anchor, anchor_pre, pos, pos_pre, neg, neg_pre)
    (sim_ft, sim_pre, proj, n_pos), = seen
    members, members_pre = torch.cat([pos, neg], 1), torch.cat([pos_pre, neg_pre], 1)
    assert n_pos == 2
    torch.testing.assert_close(sim_ft, F.cosine_similarity(anchor[:, None], members, dim=-1))
    torch.testing.assert_close(sim_pre, F.cosine_similarity(anchor_pre[:, None], members_pre, dim=-1))
    torch.testing.assert_close(proj, gen.project(members / members.norm(dim=-1, keepdim=True)))


def test_the_projection_is_fixed_by_the_seed_and_never_trained():
    """Proxies must come out the same when a run resumes: the projection is a function of (seed, width) alone,
    a unit row gets entries of variance about 1, and it is neither a parameter nor saved."""
    x = F.normalize(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    torch.manual_seed(123)
    first = ProxyGenerator(proj_dim=16, seed=3)
    torch.manual_seed(456)
    again = ProxyGenerator(proj_dim=16, seed=3)
    torch.testing.assert_close(first.project(x), again.project(x), rtol=0, atol=0)
    assert first.project(x).shape == (2000, 16) and first.project(x, 5).shape == (2000, 5)
    assert not torch.allclose(first.project(x, 5), first.project(x)[:, :5])  # each width its own draw
    assert not torch.allclose(ProxyGenerator(proj_dim=16, seed=4).project(x), first.project(x))
    assert first.project(x).var().item() == pytest.approx(1.0, abs=0.1)
    assert not any(name.startswith("_projections") for name in first.state_dict())
    torch.testing.assert_close(first.project(x.double()), first.project(x).double(), rtol=1e-5, atol=1e-5)


def test_the_initial_weights_depend_on_the_seed_only():
    torch.manual_seed(1)
    a = ProxyGenerator(seed=2).state_dict()
    state = torch.random.get_rng_state()
    torch.manual_seed(99)
    b = ProxyGenerator(seed=2).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    torch.manual_seed(1)
    torch.random.set_rng_state(state)
    ProxyGenerator(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # building one draws nothing from the global stream
    c = ProxyGenerator(seed=3).state_dict()
    assert not torch.equal(a["slots"], c["slots"])


@pytest.mark.parametrize("option, value, says", [
    ("n_proxies", 0, "n_proxies must be an integer >= 1, got 0"),
    ("hidden", 0, "hidden must be an integer >= 1, got 0"),
    ("proj_dim", -1, "proj_dim must be an integer >= 0, got -1"),
    ("alpha", -0.1, "alpha must be >= 0.0, got -0.1"),
    ("temperature", 0.0, "temperature must be > 0.0, got 0.0"),
    ("gamma", -1.0, "gamma must be >= 0.0, got -1.0"),
    ("variance_dims", 0, "variance_dims must be an integer >= 1, got 0"),
])
def test_each_option_is_checked_at_its_bound(option, value, says):
    with pytest.raises(ProxyFDAError, match=f"^{re.escape(says)}$"):
        ProxyGenerator(**{option: value})


def test_options_at_their_bounds_are_kept():
    gen = ProxyGenerator(n_proxies=1, hidden=1, proj_dim=0, alpha=0, temperature=1e-3, gamma=0, estimate_loss=0,
                         variance_dims=None, seed=5)
    assert (gen.n_proxies, gen.hidden, gen.proj_dim, gen.alpha, gen.temperature, gen.gamma) == (1, 1, 0, 0.0, 1e-3, 0.0)
    assert gen.estimate_loss is False and gen.variance_dims is None and gen.seed == 5
    assert ProxyGenerator(variance_dims=1).variance_dims == 1
    defaults = ProxyGenerator()
    assert (defaults.n_proxies, defaults.hidden, defaults.proj_dim, defaults.alpha, defaults.temperature,
            defaults.gamma, defaults.estimate_loss, defaults.variance_dims, defaults.seed) == (
        4, 32, 16, 5.0, 0.1, 0.5, True, 64, 0)


# ---- the generator's own loss ------------------------------------------------------------------------

def _objective_inputs(b=6, d=5, k=2, seed=8):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    valid = ~torch.eye(b, dtype=torch.bool)
    positive = torch.zeros(b, b, dtype=torch.bool)
    for i in range(b):
        positive[i, [(i + 1) % b, (i + 2) % b][:k]] = True
    sides = torch.stack([positive, valid & ~positive], 1).repeat_interleave(P, dim=1)  # [B, 2P, B]
    weights = (torch.rand(b, 2 * P, b, generator=g, dtype=torch.float64) + 0.1) * sides
    weights = weights / weights.sum(-1, keepdim=True)
    sim_est = torch.rand(b, 2 * P, generator=g, dtype=torch.float64)
    twin = torch.rand(b, 2 * P, generator=g, dtype=torch.float64)
    return weights, sim_est, twin, feats, positive, valid


def reference_objective(gen, weights, sim_est, twin, feats, positive, valid):
    """(loss, manifold, variance, estimate), one proxy at a time from its explicit vector."""
    b, p = len(feats), gen.n_proxies
    dims = feats if gen.variance_dims is None else gen.project(feats, gen.variance_dims)
    manifold, variance = [0.0, 0.0], [0.0, 0.0]
    for i in range(b):
        for side in range(2):
            own = [l for l in range(b) if valid[i, l] and bool(positive[i, l]) == (side == 0)]
            others = [l for l in range(b) if valid[i, l]]
            slots = range(side * p, (side + 1) * p)
            for q in slots:
                proxy = sum(weights[i, q, l] * feats[l] for l in range(b))
                cos = {l: float(proxy @ feats[l] / proxy.norm()) for l in others}
                everything = math.log(sum(math.exp(cos[l] / gen.temperature) for l in others))
                manifold[side] += (everything - sum(cos[l] / gen.temperature for l in own) / len(own)) / (b * p)
            set_std = dims[own].std(0, correction=0)
            proxies = torch.stack([weights[i, q] @ dims for q in slots])
            proxy_std = (proxies.var(0, correction=0) + 1e-10).sqrt()
            hinge = (gen.gamma * set_std - proxy_std).clamp_min(0).mean() / set_std.mean()
            variance[side] += float(hinge) / b
    estimate = float(((sim_est - twin) ** 2).mean())
    total = sum(manifold) + gen.alpha * sum(variance) + (estimate if gen.estimate_loss else 0.0)
    return total, sum(manifold), sum(variance), estimate


@pytest.mark.parametrize("options", [
    dict(alpha=5.0, temperature=0.1, gamma=0.5, estimate_loss=True, variance_dims=None),
    dict(alpha=0.7, temperature=0.3, gamma=2.0, estimate_loss=False, variance_dims=3),
])
def test_the_generators_loss_matches_a_proxy_by_proxy_reference(options):
    gen = ProxyGenerator(n_proxies=P, **options)
    weights, sim_est, twin, feats, positive, valid = _objective_inputs()
    terms = gen.objective(weights, sim_est, twin, feats, feats @ feats.T, positive, valid)
    expected = reference_objective(gen, weights, sim_est, twin, feats, positive, valid)
    assert (terms.loss.item(), terms.manifold.item(), terms.variance.item(), terms.estimate.item()) == pytest.approx(
        expected, rel=1e-9)
    assert terms.variance.item() > 0.01  # the hinge is active somewhere, so its parts are tested
    proxies = weights @ feats
    torch.testing.assert_close(terms.norms, proxies.norm(dim=-1))
    torch.testing.assert_close(terms.member_cos, proxies @ feats.T / proxies.norm(dim=-1, keepdim=True))


def test_manifold_infonce_by_hand():
    """Members (logits 1, 2, 3), the first two its own, the third valid, a fourth masked out:
    log(e¹ + e² + e³) − (1 + 2)/2. Own members that are not valid do not count."""
    logits = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=torch.float64)
    own = torch.tensor([[True, True, False, True]])
    valid = torch.tensor([[True, True, True, False]])
    expected = math.log(math.e + math.e ** 2 + math.e ** 3) - 1.5
    assert manifold_infonce(logits, own, valid).item() == pytest.approx(expected, rel=1e-12)
    nothing_own = manifold_infonce(logits, torch.zeros_like(own), valid)  # no own member: the log-sum alone
    assert nothing_own.item() == pytest.approx(math.log(math.e + math.e ** 2 + math.e ** 3), rel=1e-12)


def test_variance_hinge_by_hand():
    """Two proxies at 0 and 2 on dim 0 and equal on dim 1: σ = (1, 1e-5) (√1e-10 keeps the root's gradient
    finite); the set's σ = (1, 4), γ = 0.5: relu(0.5 − 1) and relu(2 − 1e-5), averaged, over the set's mean σ."""
    proxies = torch.tensor([[[0.0, 3.0], [2.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
    assert variance_hinge(proxies, target, 0.5).item() == pytest.approx((2 - 1e-5) / 2 / 2.5, rel=1e-12)


def test_the_loss_trains_its_generator_with_its_own_options():
    """ProxyFDALoss passes its generator options through in order: a distinct value for each."""
    loss = ProxyFDALoss(k=2, n_proxies=3, hidden=5, proj_dim=6, alpha=0.25, temperature=0.35, gamma=0.45,
                        estimate_loss=False, variance_dims=7, seed=8)
    gen = loss.generator
    assert (gen.n_proxies, gen.hidden, gen.proj_dim, gen.alpha, gen.temperature, gen.gamma, gen.estimate_loss,
            gen.variance_dims, gen.seed) == (3, 5, 6, 0.25, 0.35, 0.45, False, 7, 8)


def test_the_loss_builds_its_generator_with_the_documented_defaults():
    """docs/METHOD.md's table: P = 4 proxies a side, α = 5, T = 0.1, γ = 0.5, a 64-dim variance projection."""
    loss = ProxyFDALoss()
    assert (loss.proxy_similarity, loss.proxy_weight, loss.detach_proxies, loss.train_generator_with_fda) == (
        "estimated", 1.0, False, False)
    gen = loss.generator
    assert (gen.n_proxies, gen.hidden, gen.proj_dim, gen.alpha, gen.temperature, gen.gamma, gen.estimate_loss,
            gen.variance_dims, gen.seed) == (4, 32, 16, 5.0, 0.1, 0.5, True, 64, 0)


@pytest.mark.parametrize("options, says", [
    ({"proxy_weight": -0.1}, "proxy_weight must be >= 0.0, got -0.1"),
    ({"proxy_similarity": "exact"}, "unknown proxy_similarity 'exact'; choose one of 'estimated', 'pooled'"),
])
def test_the_losss_own_options_are_refused_by_name(options, says):
    with pytest.raises(ProxyFDAError) as error:
        ProxyFDALoss(**options)
    assert str(error.value) == says
    assert ProxyFDALoss(proxy_weight=0).proxy_weight == 0.0


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_sequence_conv_is_torchs_conv1d_with_same_padding(kernel_size):
    """Tap t of the one matmul is Conv1d's kernel position t: the same weights through F.conv1d on [B, C, S]."""
    from proxyfda.losses.proxy_generator import SequenceConv

    torch.manual_seed(0)
    conv = SequenceConv(4, 3, kernel_size)
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    weight = conv.weight.detach().double().reshape(4, kernel_size, 3).permute(2, 0, 1)  # [out, in, k]
    reference = F.conv1d(x.transpose(1, 2), weight, conv.bias.detach().double(), padding=kernel_size // 2)
    torch.testing.assert_close(conv.double()(x), reference.transpose(1, 2))
