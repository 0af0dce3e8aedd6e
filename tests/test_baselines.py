"""L2-SP, LDIFS and WiSE-FT against hand computations and exact end points."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from proxyfda.errors import ProxyFDAError
from proxyfda.interpolation import wise_ft
from proxyfda.losses import L2SPLoss, LDIFSFinalLoss, LDIFSLoss, build_regularizer


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_l2sp_is_zero_at_the_reference_and_matches_a_hand_sum():
    net = small_net()
    reg = build_regularizer("l2sp", reference_state=net.state_dict(), alpha=0.5)
    assert reg.input_kind == "model"
    assert reg(net).item() == 0.0
    with torch.no_grad():
        net[0].weight.add_(0.1)
        net[4].bias[0] -= 2.0
    expected = 0.5 * (0.1 ** 2 * net[0].weight.numel() + 2.0 ** 2)
    assert reg(net).item() == pytest.approx(expected, rel=1e-5)
    terms = reg(net, return_terms=True)  # logged as reg_loss and reg_distance_sq
    assert set(terms) == {"loss", "distance_sq"} and terms["distance_sq"].item() == pytest.approx(expected / 0.5)
    assert reg.records["regularized"] == len(list(net.parameters()))


def test_l2sp_skips_new_parameters_and_refuses_other_architectures():
    net = small_net()
    reg = L2SPLoss(net[:2].state_dict())
    wrapped = nn.Sequential(*net[:2], nn.Linear(3, 3))
    assert reg(wrapped).item() == 0.0 and reg.records["unregularized"] == 2
    with pytest.raises(ProxyFDAError, match="none of the model's parameter names"):
        reg(nn.ModuleDict({"fc": nn.Linear(2, 2)}))
    with pytest.raises(ProxyFDAError, match="shape"):
        reg(nn.Sequential(nn.Conv2d(3, 2, 3)))


def test_ldifs_final_is_zero_for_identical_features_and_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    feats, feats_pre = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    reg = LDIFSFinalLoss(alpha=10.0)
    assert reg(feats_pre, feats_pre).item() == 0.0
    assert reg(3.0 * feats_pre, feats_pre).item() == pytest.approx(0.0, abs=1e-6)
    a = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    b = feats_pre.numpy() / np.linalg.norm(feats_pre.numpy(), axis=1, keepdims=True)
    expected = 10.0 * np.mean(np.sum((a - b) ** 2, axis=1))
    assert reg(feats, feats_pre).item() == pytest.approx(expected, rel=1e-5)


def test_the_reference_follows_the_model_to_its_precision():
    """A float32 reference against a model moved to float64: the distance is the float64 one, and the reference
    is kept in the model's precision from then on (it would follow it to a GPU the same way)."""
    net = small_net()
    reg = L2SPLoss(net.state_dict(), alpha=1.0)
    net = net.double()
    with torch.no_grad():
        net[4].bias.add_(1e-9)  # below float32's resolution of the bias, within float64's
    assert reg(net).item() == pytest.approx(5 * 1e-18, rel=1e-6)
    assert {reg.reference[name].dtype for name, _ in net.named_parameters()} == {torch.float64}


def test_one_layer_ldifs_takes_one_image_records_its_cosine_and_refuses_a_negative_strength():
    """α = 10 by default (as LDIFS's own); a batch of one image is enough (the loss is per image); the record
    ``cos_mean`` is the mean cosine of the pairs."""
    g = torch.Generator().manual_seed(1)
    feats, feats_pre = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    reg = LDIFSFinalLoss()
    cos = torch.nn.functional.cosine_similarity(feats, feats_pre)
    terms = reg(feats, feats_pre, return_terms=True)
    assert set(terms) == {"loss", "distance_sq"}  # logged as reg_loss and reg_distance_sq
    assert terms["distance_sq"].item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-5)
    assert reg(feats, feats_pre).item() == pytest.approx(10.0 * (2 - 2 * cos).mean().item(), rel=1e-5)
    assert reg.records["cos_mean"] == pytest.approx(cos.mean().item(), rel=1e-5)
    assert reg(feats[:1], feats_pre[:1]).item() == pytest.approx(10.0 * (2 - 2 * cos[0]).item(), rel=1e-5)
    assert LDIFSFinalLoss(alpha=0.0)(feats, feats_pre).item() == 0.0
    with pytest.raises(ProxyFDAError, match=r"^alpha must be >= 0.0, got -1.0"):
        LDIFSFinalLoss(alpha=-1.0)


def _trained_pair():
    pre, ft = small_net(0), small_net(1)
    ft.train()
    ft(torch.randn(8, 3, 6, 6))  # moves the BatchNorm running statistics and num_batches_tracked
    with torch.no_grad():
        pre[1].running_mean.fill_(1.0)
    return pre, ft


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_wise_ft_interpolates_parameters_and_buffers(alpha):
    pre, ft = _trained_pair()
    pre_state, ft_state = copy.deepcopy(pre.state_dict()), copy.deepcopy(ft.state_dict())
    mixed = wise_ft(pre, ft, alpha).state_dict()
    for name, value in mixed.items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(value, ft_state[name])
        elif alpha == 0.0:
            assert torch.equal(value, pre_state[name])
        elif alpha == 1.0:
            assert torch.equal(value, ft_state[name])
        else:
            torch.testing.assert_close(value, (pre_state[name] + ft_state[name]) / 2)
    torch.testing.assert_close(mixed["1.running_mean"], (1 - alpha) * 1.0 + alpha * ft_state["1.running_mean"])
    assert all(torch.equal(v, pre_state[k]) for k, v in pre.state_dict().items())  # inputs untouched
    assert all(torch.equal(v, ft_state[k]) for k, v in ft.state_dict().items())


def test_wise_ft_refuses_mismatched_models_and_bad_alpha():
    pre, ft = _trained_pair()
    with pytest.raises(ProxyFDAError, match="4.weight"):
        wise_ft(pre, nn.Sequential(*list(ft)[:4]), 0.5)
    other = small_net()
    other[4] = nn.Linear(64, 7)
    with pytest.raises(ProxyFDAError, match=r"4\.weight \(5, 64\) vs \(7, 64\)"):
        wise_ft(pre, other, 0.5)
    with pytest.raises(ProxyFDAError, match="alpha"):
        wise_ft(pre, ft, 1.5)


def test_wise_ft_drops_a_cached_weights_hash():
    class HashedNet(nn.Sequential):
        def invalidate_hash(self):
            self.hash = None

    pre, ft = HashedNet(nn.Linear(2, 2)), HashedNet(nn.Linear(2, 2))
    ft.hash = "hash of the fine-tuned weights"
    assert wise_ft(pre, ft, 0.5).hash is None


def test_ldifs_original_form_compares_tapped_activations_per_element():
    """LDIFS as published: α · Σ_taps mean((a − a_pre)²) over the taps of a frozen pre-trained copy,
    here against activations collected with hooks of the test's own."""
    import copy

    from proxyfda.encoders import create_encoder

    encoder = create_encoder("efficientnet-lite0", image_size=32)
    taps = encoder.tap_modules()
    assert len(taps) == 9 and taps[0] is encoder.backbone._bn0 and taps[-1] is encoder.backbone._bn1
    fine = copy.deepcopy(encoder)
    with torch.no_grad():
        fine.backbone._blocks[3]._project_conv.weight.mul_(1.5)  # change one block: later taps move
    pixels = torch.rand(4, 3, 32, 32)

    def hooked(model):
        seen = []
        handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for m in model.tap_modules()]
        with torch.no_grad():
            model(pixels)
        for handle in handles:
            handle.remove()
        return seen

    expected_taps = [((a - b) ** 2).mean().item() for a, b in zip(hooked(fine), hooked(encoder))]
    assert expected_taps[0] == 0.0 and expected_taps[-1] > 0.0
    loss = LDIFSLoss(alpha=10.0)
    with fine.capture_taps() as got, encoder.capture_taps() as got_pre:
        fine(pixels)
        encoder(pixels)
    terms = loss(got, got_pre, return_terms=True)
    assert terms["loss"].item() == pytest.approx(10.0 * sum(expected_taps), rel=1e-5)
    np.testing.assert_allclose(loss.records["tap_distances"].numpy(), expected_taps, rtol=1e-5)
    with pytest.raises(ProxyFDAError, match="ldifs-final"):
        loss([], [])
    for taps, taps_pre in ((got[0], got_pre[0]), (got, got_pre[0]), (got[0], got_pre)):  # features for tap lists
        with pytest.raises(ProxyFDAError, match="lists of activations"):
            loss(taps, taps_pre)


def test_ldifs_on_taps_is_ten_by_default_as_published_and_refuses_a_negative_strength():
    assert LDIFSLoss().alpha == 10.0  # Mukhoti et al.'s λ for LDIFS
    with pytest.raises(ProxyFDAError, match=r"^alpha must be >= 0.0, got -1$"):
        LDIFSLoss(alpha=-1)


def test_the_reference_follows_the_model_to_its_device():
    """The meta device stands in for a GPU on a machine without one: a reference left on the CPU could not be
    subtracted from the parameters there."""
    net = small_net()
    reg = L2SPLoss(net.state_dict(), alpha=1.0)
    reg.record_stats = False  # a record is a number read back, which a meta tensor does not hold
    loss = reg(net.to("meta"))
    assert loss.device.type == "meta"
    assert {reg.reference[name].device.type for name, _ in net.named_parameters()} == {"meta"}


def test_l2sp_takes_a_module_or_its_state_and_refuses_what_holds_no_reference():
    """The encoder itself stands for its state dict; what is not a tensor, or not a float one (BatchNorm's step
    counter), has no pre-trained value to pull towards; α = 0.5 by default, the method table's strength."""
    from proxyfda.methods import get_method

    net = small_net()
    state = {**net.state_dict(), "_step": 3}
    from_module, from_state = L2SPLoss(net), L2SPLoss(state)
    floats = {name for name, value in net.state_dict().items() if value.is_floating_point()}
    assert set(from_module.reference) == set(from_state.reference) == floats
    assert from_state.alpha == get_method("l2sp").options["alpha"] == 0.5
    for empty in ({}, [net.state_dict()]):
        with pytest.raises(ProxyFDAError, match=r"^reference_state must be a non-empty state dict of the pre-trained "
                                                r"encoder \(encoder\.state_dict\(\) taken before fine-tuning\)$"):
            L2SPLoss(empty)
    with pytest.raises(ProxyFDAError, match=r"^alpha must be >= 0\.0, got -1$"):
        L2SPLoss(state, alpha=-1)
