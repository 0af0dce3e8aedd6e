"""SAFE on a tiny random open_clip ResNet loaded from a local checkpoint, like real CLIP weights."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.features import embed
from proxyfda.config import SafeConfig
from proxyfda.safe import choose_beta, fit_safe
from proxyfda.safe_encoder import apply_safe, blend, dense_features, load_safe, save_safe
from proxyfda.zeroshot import text_classifier, zero_shot_accuracy
from test_zeroshot import first_classes, one_thread, register_tiny_clip, tiny_clip_spec  # noqa: F401

QUICK = SafeConfig(steps=30, lr=3e-3, batch_size=9, label_smoothing=0.0)


@pytest.fixture(scope="module")
def rn_spec(tmp_path_factory) -> str:
    return tiny_clip_spec(tmp_path_factory.mktemp("safe-clip"), "rn")


@pytest.fixture(scope="module")
def splits():
    return first_classes("digits:train", 60), first_classes("digits:test", 60)


@pytest.fixture(scope="module")
def fitted(rn_spec, splits):
    """One SAFE fit shared by the tests that only read it, plus the base's state before the fit."""
    base = create_encoder(rn_spec)
    before = {k: v.clone() for k, v in base.clip_model[0].state_dict().items()}
    return base, before, fit_safe(base, *splits, QUICK)


def _pixels(images, size: int) -> torch.Tensor:
    return images.batch(np.arange(len(images)), size)


def test_only_the_attention_pooling_changes(fitted):
    base, before, result = fitted
    for key, value in base.clip_model[0].state_dict().items():  # the base CLIP, text tower included
        assert torch.equal(value, before[key]), f"fit_safe changed {key} of the encoder it was given"
    safe = apply_safe(base, result)
    trunk = safe.backbone.trunk.state_dict()
    outside = {k: v for k, v in base.backbone.state_dict().items() if not k.startswith("attnpool.")}
    assert trunk.keys() == outside.keys()
    assert all(torch.equal(trunk[k], outside[k]) for k in outside)
    original = safe.backbone.head.original.state_dict()
    tuned = safe.backbone.head.tuned.state_dict()
    assert all(torch.equal(original[k], base.backbone.attnpool.state_dict()[k]) for k in original)
    assert all(not torch.equal(tuned[k], original[k]) for k in ("q_proj.weight", "v_proj.weight", "c_proj.weight"))


def test_beta_endpoints_and_blend(fitted, splits):
    base, _, result = fitted
    x = _pixels(splits[1], base.image_size)[:6]
    with torch.no_grad():
        original = F.normalize(base(x), dim=1)
        dense = dense_features(base, splits[1].subset(np.arange(6)))
        tuned = F.normalize(apply_safe(base, result).backbone.head.tuned(dense), dim=1)
        at = {beta: apply_safe(base, dataclasses.replace(result, beta=beta))(x) for beta in (0.0, 0.5, 1.0)}
    torch.testing.assert_close(at[0.0], original, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(at[1.0], tuned, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(at[0.5], F.normalize(0.5 * tuned + 0.5 * original, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blend(tuned, original, 0.5), at[0.5], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(at[1.0], original, atol=1e-3)


def test_weights_hash_follows_head_and_beta(fitted):
    base, _, result = fitted
    safe = apply_safe(base, result)
    other_beta = apply_safe(base, dataclasses.replace(result, beta=0.25 if result.beta != 0.25 else 0.75))
    head = dict(result.head_state, **{"tuned.c_proj.bias": result.head_state["tuned.c_proj.bias"] + 1e-3})
    other_head = apply_safe(base, dataclasses.replace(result, head_state=head))
    hashes = {base.weights_hash(), safe.weights_hash(), other_beta.weights_hash(), other_head.weights_hash()}
    assert len(hashes) == 4
    assert safe.weights_hash() == apply_safe(base, result).weights_hash()
    assert (safe.image_size, safe.pixel_norm, safe.feature_dim) == (base.image_size, base.pixel_norm, base.feature_dim)


def test_dense_maps_are_computed_once_per_image(rn_spec, splits):
    base = create_encoder(rn_spec)
    calls = []
    base.backbone.layer4.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    for steps in (2, 12):
        calls.clear()
        fit_safe(base, *splits, dataclasses.replace(QUICK, steps=steps))
        assert sum(calls) == len(splits[0]) + len(splits[1])  # one trunk pass per image, whatever the steps
    dense = dense_features(base, splits[1])
    with torch.no_grad():
        torch.testing.assert_close(base.backbone.attnpool(dense), base(_pixels(splits[1], base.image_size)))


def test_dense_maps_disk_cache(rn_spec, splits, tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))  # an empty cache, whatever ran before
    base = create_encoder(rn_spec)
    calls = []
    base.backbone.layer4.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    first = dense_features(base, splits[1], use_cache=True)
    again = dense_features(base, splits[1], use_cache=True)
    assert sum(calls) == len(splits[1]) and torch.equal(first, again)


def test_beta_is_the_argmax_of_validation_accuracy(fitted, splits):
    base, _, result = fitted
    assert sorted(result.val_accuracy) == list(QUICK.beta_grid)
    assert result.val_accuracy[result.beta] == max(result.val_accuracy.values())
    assert result.beta == choose_beta(result.val_accuracy)
    assert choose_beta({0.0: 0.5, 0.3: 0.9, 0.6: 0.9, 1.0: 0.7}) == 0.3  # ties go towards CLIP
    # the applied encoder scores what selection measured, through the ordinary zero-shot path
    rows = text_classifier(base, splits[1].class_names, QUICK.templates)
    measured = zero_shot_accuracy(apply_safe(base, result), splits[1], rows, use_cache=False)
    assert measured == pytest.approx(result.val_accuracy[result.beta])


def test_training_loss_decreases(fitted):
    _, _, result = fitted
    losses = [record["loss"] for record in result.history]
    assert len(losses) == QUICK.steps and result.status == "completed"
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    assert result.val_accuracy[1.0] > result.val_accuracy[0.0]  # the tuned pooling learned the task


def test_stop_is_honoured_between_steps(rn_spec, splits):
    stop = threading.Event()

    def progress(record):
        if record.get("step") == 3:
            stop.set()

    result = fit_safe(create_encoder(rn_spec), *splits, QUICK, progress=progress, stop=stop)
    assert result.status == "stopped" and result.steps_done == 3 and len(result.history) == 3


def test_saved_result_loads_as_an_encoder_spec(fitted, splits, tmp_path):
    base, _, result = fitted
    path = save_safe(dataclasses.replace(result), tmp_path / "safe.pt")
    loaded = load_safe(path)
    assert loaded.beta == result.beta and loaded.config == result.config
    from_spec = create_encoder(f"safe:{path}")
    direct = apply_safe(base, loaded)
    assert from_spec.spec == direct.spec == f"safe:{path}"
    assert from_spec.weights_hash() == direct.weights_hash()
    np.testing.assert_allclose(embed(from_spec, splits[1]), embed(direct, splits[1]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ProxyFDAError, match="not a SAFE result"):
        load_safe(_torch_file(tmp_path / "other.pt"))


def _torch_file(path):
    torch.save({"weights": torch.zeros(1)}, path)
    return path


def test_result_on_other_weights_is_refused(fitted, rn_spec):
    _, _, result = fitted
    other = create_encoder(rn_spec.rsplit(":", 1)[0] + ":none")  # same architecture, fresh random weights
    with pytest.raises(ProxyFDAError, match="trained on other CLIP weights"):
        apply_safe(other, result)


def test_encoders_without_attention_pooling_are_refused(tmp_path, splits):
    vit = create_encoder(f"open_clip:{register_tiny_clip(tmp_path, 'vit')}:none")
    lite = create_encoder("efficientnet-lite0", image_size=32)
    for encoder, tower in ((vit, "VisionTransformer"), (lite, "EfficientNet")):
        with pytest.raises(ProxyFDAError, match=f"{tower} image tower; use an open_clip ResNet such as RN50"):
            fit_safe(encoder, *splits, QUICK)
        with pytest.raises(ProxyFDAError, match="open_clip ResNet such as RN50"):
            dense_features(encoder, splits[1])


def test_wrong_image_size_and_config_are_clear_errors(rn_spec, splits):
    with pytest.raises(ProxyFDAError, match="takes 64 px inputs, not 96 px"):
        create_encoder(rn_spec, image_size=96)
    with pytest.raises(ProxyFDAError, match="beta_grid"):
        SafeConfig(beta_grid=(0.0, 1.5))
    assert SafeConfig.from_dict(QUICK.to_dict()) == QUICK
