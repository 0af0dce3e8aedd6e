"""Encoders: real offline weights, open_clip from local files, run directories, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from proxyfda.backbones import read_checkpoint
from proxyfda.paths import bundled_efficientnet_lite0_weights
from proxyfda.encoders import create_encoder, list_encoders
from proxyfda.errors import ProxyFDAError

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory) -> str:
    """Register a tiny open_clip ViT config so open_clip's real code path runs in a second."""
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    (folder / "proxyfda-tiny-vit.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return "proxyfda-tiny-vit"


def _photo(name: str) -> torch.Tensor:
    from skimage import data as skdata
    from PIL import Image

    image = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((224, 224))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0


def test_efficientnet_lite0_has_real_imagenet_weights():
    """The offline default is the real pre-trained network: it recognises photos it never saw here."""
    encoder = create_encoder("efficientnet-lite0")
    state = torch.load(bundled_efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    with torch.inference_mode():
        for name, accepted in (("coffee", {967, 968, 504}), ("chelsea", {281, 282, 285, 287})):
            feats = encoder(_photo(name))
            logits = feats @ state["_fc.weight"].T + state["_fc.bias"]
            top5 = set(logits.topk(5).indices[0].tolist())
            assert top5 & accepted, f"{name}: top-5 ImageNet classes {top5} miss {accepted}"
    assert encoder.feature_dim == 1280 and feats.shape == (1, 1280)


def test_image_size_changes_features_not_weights():
    a = create_encoder("efficientnet-lite0", image_size=64)
    b = create_encoder("efficientnet-lite0", image_size=96)
    assert a.weights_hash() == b.weights_hash()
    assert a.preprocessing_key() != b.preprocessing_key()
    with torch.inference_mode():
        assert a(torch.rand(2, 3, 64, 64)).shape == (2, 1280)


def test_local_efficientnet_checkpoint_roundtrip_and_mismatch(tmp_path):
    base = create_encoder("efficientnet-lite0", image_size=64)
    with torch.no_grad():
        base.backbone._conv_stem.weight.mul_(0.5)
    path = tmp_path / "lite0.pth"
    torch.save(base.backbone.state_dict(), path)
    again = create_encoder(f"efficientnet-lite0:{path}", image_size=64)
    assert again.weights_hash() != create_encoder("efficientnet-lite0", image_size=64).weights_hash()
    base.invalidate_hash()
    assert again.weights_hash() == base.weights_hash()
    with pytest.raises(ProxyFDAError, match=r"does not fit architecture efficientnet-lite1.*(missing|shape)"):
        create_encoder(f"efficientnet-lite1:{path}")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(ProxyFDAError, match="not a readable PyTorch checkpoint"):
        create_encoder(f"efficientnet-lite0:{text}")
    with pytest.raises(ProxyFDAError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_unknown_specs_name_what_exists():
    with pytest.raises(ProxyFDAError, match="specs start with one of"):
        create_encoder("resnet-9000")
    with pytest.raises(ProxyFDAError, match="no architecture"):
        create_encoder("open_clip:NoSuchNet:none")
    with pytest.raises(ProxyFDAError, match="no offline weights"):
        create_encoder("efficientnet-lite2")
    assert {"efficientnet-lite0", "open_clip", "run"} <= set(list_encoders())


def test_open_clip_local_checkpoint(tiny_clip_arch, tmp_path):
    random_init = create_encoder(f"open_clip:{tiny_clip_arch}:none")
    assert random_init.feature_dim == 32 and random_init.image_size == 32
    path = tmp_path / "tiny.pt"
    torch.save(random_init.clip_model[0].state_dict(), path)
    loaded = create_encoder(f"open_clip:{tiny_clip_arch}:{path}")
    assert loaded.weights_hash() == random_init.weights_hash()
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), random_init(x))


def test_open_clip_checkpoint_of_another_architecture(tiny_clip_arch, tmp_path):
    path = tmp_path / "lite.pt"
    torch.save(create_encoder("efficientnet-lite0", image_size=32).backbone.state_dict(), path)
    with pytest.raises(ProxyFDAError, match=f"does not fit open_clip architecture {tiny_clip_arch}"):
        create_encoder(f"open_clip:{tiny_clip_arch}:{path}")


def test_open_clip_hub_tag_offline_is_a_clear_error(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ProxyFDAError, match=r"needs the internet.*open_clip:ViT-B-32:/path/to/weights"):
        create_encoder("open_clip:ViT-B-32:openai")
    with pytest.raises(ProxyFDAError, match="neither a file nor a pretrained tag"):
        create_encoder("open_clip:ViT-B-32:not-a-tag")


def test_run_directory_loads_the_fine_tuned_weights(tiny_run):
    fine = create_encoder(f"run:{tiny_run}")
    base = create_encoder("efficientnet-lite0", image_size=32)
    assert fine.image_size == 32  # the resolution the run trained at
    assert fine.weights_hash() != base.weights_hash()
    saved = torch.load(tiny_run / "checkpoint.pt", weights_only=True)["encoder"]
    for key, value in fine.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_run_directory_errors(tmp_path, tiny_run):
    with pytest.raises(ProxyFDAError, match="not a proxyfda run directory"):
        create_encoder(f"run:{tmp_path}")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((Path(tiny_run) / "config.json").read_text())
    with pytest.raises(ProxyFDAError, match="no checkpoint.pt yet"):
        create_encoder(f"run:{partial}")
