"""Feature extraction: equals the bare forward pass, and its cache can never serve stale features."""

from __future__ import annotations

import numpy as np
import torch

from proxyfda.data import load_images
from proxyfda.encoders import create_encoder
from proxyfda.features import embed, extract_features, feature_cache_path


def test_embed_equals_forward_and_ignores_batch_size():
    images = load_images("digits", n=37)
    encoder = create_encoder("efficientnet-lite0", image_size=32)
    with torch.inference_mode():
        direct = encoder(images.batch(np.arange(37), 32)).numpy()
    for batch_size in (8, 64):
        np.testing.assert_allclose(embed(encoder, images, batch_size=batch_size), direct, rtol=1e-4, atol=1e-4)


def test_cache_hits_and_reports_progress(tmp_path):
    images = load_images("digits", n=20)
    encoder = create_encoder("efficientnet-lite0", image_size=32)
    calls = []
    first = extract_features(encoder, images, batch_size=8, root=tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (20, 20) and len(calls) == 3
    assert feature_cache_path(encoder, images, tmp_path).exists()
    again = extract_features(encoder, images, root=tmp_path)
    np.testing.assert_array_equal(first, again)


def test_changed_weights_data_or_resolution_miss_the_cache(tmp_path, tiny_run):
    images = load_images("digits", n=20)
    base = create_encoder("efficientnet-lite0", image_size=32)
    fine = create_encoder(f"run:{tiny_run}")
    bigger = create_encoder("efficientnet-lite0", image_size=48)
    other_images = load_images("digits", n=20, seed=1)
    paths = {feature_cache_path(base, images, tmp_path), feature_cache_path(fine, images, tmp_path),
             feature_cache_path(bigger, images, tmp_path), feature_cache_path(base, other_images, tmp_path)}
    assert len(paths) == 4
    a = extract_features(base, images, root=tmp_path)
    b = extract_features(fine, images, root=tmp_path)
    assert not np.allclose(a, b)
    # weights changed in place (as a fine-tune does) change the key once the hash is refreshed
    with torch.no_grad():
        base.backbone._conv_head.weight.mul_(1.5)
    base.invalidate_hash()
    assert not np.allclose(extract_features(base, images, root=tmp_path), a)


def test_an_encoder_source_finds_only_the_features_of_the_images_it_embedded(tmp_path):
    """A source remembered for one image set answers for that set, with its own features, and for no other."""
    from proxyfda.features import features_from_source, remember_source

    encoder = create_encoder("efficientnet-lite0", image_size=32)
    images, other = load_images("digits", n=20), load_images("digits", n=20, seed=1)
    features = extract_features(encoder, images, root=tmp_path)
    remember_source("efficientnet-lite0@32", encoder, images, root=tmp_path)
    np.testing.assert_array_equal(features_from_source("efficientnet-lite0@32", images, root=tmp_path), features)
    assert features_from_source("efficientnet-lite0@32", other, root=tmp_path) is None
    assert features_from_source("efficientnet-lite0@48", images, root=tmp_path) is None
