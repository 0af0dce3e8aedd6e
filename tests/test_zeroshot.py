"""Zero-shot classification with tiny random open_clip models (a ViT and a ModifiedResNet).

The helpers here also build the tiny ResNet CLIP that tests/test_safe.py fine-tunes. Real CLIP
weights cannot be downloaded offline; the code paths are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxyfda.data import ImageSet, load_images
from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.config import DEFAULT_TEMPLATES
from proxyfda.zeroshot import text_classifier, zero_shot_accuracy, zero_shot_logits

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_VISION = {
    # open_clip builds a ModifiedResNet when "layers" is a list; 64 px -> a 2x2 map of 256 channels
    "rn": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "vit": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
}


def register_tiny_clip(folder: Path, kind: str) -> str:
    """Register a tiny open_clip config ("rn" or "vit") and return its architecture name."""
    import open_clip

    arch = f"proxyfda-zs-tiny-{kind}"
    (folder / f"{arch}.json").write_text(json.dumps({"embed_dim": 32, "vision_cfg": TINY_VISION[kind],
                                                     "text_cfg": TINY_TEXT}))
    open_clip.add_model_config(folder)
    return arch


def tiny_clip_spec(folder: Path, kind: str) -> str:
    """A seeded random tiny CLIP saved to a local checkpoint; its spec loads it like real weights.

    The ResNet's BatchNorm statistics are fitted to digit images first: with open_clip's init
    (zeroed residual branches, unit running variance) the dense map shrinks to ~1e-3 and the
    attention pooling sees only its positional embedding, so every image would look the same.
    """
    arch = register_tiny_clip(folder, kind)
    torch.manual_seed(0)
    encoder = create_encoder(f"open_clip:{arch}:none")
    if kind == "rn":
        _fit_batchnorm(encoder, load_images("digits:train", n=100, seed=1))
    path = folder / f"{arch}.pt"
    torch.save(encoder.clip_model[0].state_dict(), path)
    return f"open_clip:{arch}:{path}"


@torch.no_grad()
def _fit_batchnorm(encoder, images: ImageSet) -> None:
    norms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the one calibration batch
    encoder.backbone.train()
    encoder(images.batch(np.arange(len(images)), encoder.image_size))
    encoder.backbone.eval()


def first_classes(spec: str, n: int, classes: int = 3) -> ImageSet:
    """A class-balanced sample of sklearn digits restricted to the first ``classes`` digits."""
    images = load_images(spec, n=n)
    images = images.subset(np.flatnonzero(images.labels < classes))
    images.class_names = ["zero", "one", "two", "three"][:classes]
    return images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices are slower on two contended OpenMP threads than on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_specs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("zeroshot-clip")
    return {kind: tiny_clip_spec(folder, kind) for kind in TINY_VISION}


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_classifier_has_one_unit_row_per_class(tiny_specs, kind):
    encoder = create_encoder(tiny_specs[kind])
    rows = text_classifier(encoder, ["cat", "dog", "T-shirt/top"])
    assert rows.shape == (3, 32)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(3))
    one_template = text_classifier(encoder, ["cat", "dog", "T-shirt/top"], templates=["a photo of a {}."])
    assert not torch.allclose(rows, one_template)  # the templates are averaged, not ignored


def test_each_class_row_is_the_mean_of_its_unit_prompt_embeddings(tiny_specs):
    """Row c: open_clip's text embedding of each template filled with class c, each scaled to unit length,
    averaged over the templates and scaled to unit length again (prompt by prompt, straight from open_clip)."""
    import open_clip

    from proxyfda.zeroshot import clip_architecture, clip_model_of

    encoder = create_encoder(tiny_specs["vit"])
    names, templates = ["cat", "dog", "T-shirt/top"], ["a photo of a {}.", "{}", "a blurry drawing of the {}."]
    model = clip_model_of(encoder)
    tokenizer = open_clip.get_tokenizer(clip_architecture(encoder), context_length=model.context_length)
    with torch.no_grad():
        def unit_prompt(text: str) -> torch.Tensor:
            embedding = model.encode_text(tokenizer([text]))[0].float()
            return embedding / embedding.norm()

        expected = torch.stack([torch.stack([unit_prompt(t.format(name)) for t in templates]).mean(0)
                                for name in names])
        norms = torch.stack([model.encode_text(tokenizer([t.format("cat")]))[0].norm() for t in templates])
    assert norms.max() > 1.01 * norms.min()  # unequal lengths: leaving out the unit scaling would show
    torch.testing.assert_close(text_classifier(encoder, names, templates),
                               expected / expected.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_encoder_output_is_clip_image_embedding(tiny_specs, kind):
    """forward() is open_clip's encode_image before normalisation: the joint space text lives in."""
    encoder = create_encoder(tiny_specs[kind])
    x = torch.rand(2, 3, encoder.image_size, encoder.image_size)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), encoder.clip_model[0].encode_image(encoder.pixel_norm(x)))


def test_accuracy_equals_argmax_of_cosine(tiny_specs):
    encoder = create_encoder(tiny_specs["rn"])
    images = first_classes("digits:test", 30)
    rows = text_classifier(encoder, images.class_names)
    with torch.no_grad():
        features = encoder(images.batch(np.arange(len(images)), encoder.image_size))
    cosine = F.normalize(features, dim=1) @ rows.T
    expected = float(np.mean(cosine.argmax(dim=1).numpy() == images.labels))
    accuracy = zero_shot_accuracy(encoder, images, rows, batch_size=4, use_cache=False)
    assert 0.0 <= accuracy <= 1.0
    assert accuracy == pytest.approx(expected)
    assert zero_shot_accuracy(encoder, images, rows) == pytest.approx(expected)  # via the disk cache


def test_logits_are_scaled_cosines():
    rows = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    logits = zero_shot_logits(torch.tensor([[3.0, 0.0]]), rows, logit_scale=10.0)
    torch.testing.assert_close(logits, torch.tensor([[10.0, 10.0 / 2 ** 0.5]]))


def test_non_clip_encoder_is_a_clear_error():
    encoder = create_encoder("efficientnet-lite0", image_size=32)
    with pytest.raises(ProxyFDAError, match="needs a CLIP encoder with a text tower"):
        text_classifier(encoder, ["cat", "dog"])


def test_bad_inputs_are_clear_errors(tiny_specs):
    encoder = create_encoder(tiny_specs["vit"])
    with pytest.raises(ProxyFDAError, match="must each contain"):
        text_classifier(encoder, ["cat"], templates=["a photo"])
    images = first_classes("digits:test", 12)
    rows = text_classifier(encoder, ["cat", "dog"], templates=DEFAULT_TEMPLATES[:1])
    with pytest.raises(ProxyFDAError, match="2 classes but"):
        zero_shot_accuracy(encoder, images, rows)
