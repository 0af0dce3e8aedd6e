"""Zero-shot classification with a CLIP encoder's own text tower.

A class is represented by the mean of its prompts' text embeddings ("a photo of a {}." and
friends), L2-normalised; an image is classified by the cosine between its embedding and each
class row. ``OpenClipEncoder.forward`` returns ``model.visual(x)``, which open_clip's
``CLIP.encode_image`` also returns (before its optional normalisation) for both image towers:
the ViT ends in its ``proj`` matrix and the ModifiedResNet in ``attnpool.c_proj``, each mapping
into the joint image-text space. Encoder features can therefore be compared with text rows as is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Encoder
from .config import CLIP_LOGIT_SCALE, DEFAULT_TEMPLATES
from .data import ImageSet
from .errors import ProxyFDAError


def clip_model_of(encoder: Encoder) -> nn.Module:
    """The whole open_clip model (text tower included) behind ``encoder``, or a clear error."""
    models = getattr(encoder, "clip_model", None)
    model = models[0] if models else None
    if model is None or not hasattr(model, "encode_text"):
        raise ProxyFDAError(
            f"zero-shot classification needs a CLIP encoder with a text tower, and '{encoder.spec}' "
            f"({encoder.name}) has none; use an open_clip spec such as 'open_clip:RN50:/path/to/weights'")
    return model


def clip_architecture(encoder: Encoder) -> str:
    """The open_clip architecture name of ``encoder`` (it selects the matching tokenizer)."""
    import open_clip

    arch = getattr(encoder, "arch", None)
    if arch is None and encoder.spec.startswith("open_clip:"):
        arch = encoder.spec.split(":")[1]
    if arch is None and encoder.name.startswith("open_clip "):
        arch = encoder.name.split()[1]  # the factory names these "open_clip <arch> ..."
    if arch not in open_clip.list_models():
        raise ProxyFDAError(f"cannot tell which open_clip architecture '{encoder.spec}' is, so its tokenizer "
                            "is unknown; build the encoder from an 'open_clip:<arch>:<weights>' spec")
    return arch


def _text_device(model: nn.Module) -> torch.device:
    # The encoder moves only the image tower, so the text tower may sit on another device.
    for name, param in model.named_parameters():
        if not name.startswith("visual."):
            return param.device
    return torch.device("cpu")


@torch.no_grad()  # not inference_mode: SAFE trains against these rows
def text_classifier(encoder: Encoder, class_names: list[str],
                    templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """[C, D] unit rows: each class's prompt embeddings averaged over ``templates``, on the encoder's device."""
    import open_clip

    if not class_names:
        raise ProxyFDAError("zero-shot classification needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ProxyFDAError(f"prompt templates must each contain '{{}}' for the class name, got {list(templates)}")
    model = clip_model_of(encoder)
    tokenizer = open_clip.get_tokenizer(clip_architecture(encoder), context_length=getattr(model, "context_length", None))
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = tokenizer(prompts).to(_text_device(model))
    text = F.normalize(model.encode_text(tokens).float(), dim=-1)
    rows = text.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(rows, dim=-1).to(encoder.device)


def zero_shot_logits(image_features: torch.Tensor, classifier: torch.Tensor,
                     logit_scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """[N, C] scaled cosines between (not necessarily normalised) image features and unit class rows."""
    return logit_scale * F.normalize(image_features.float(), dim=-1) @ classifier.float().T


def zero_shot_accuracy(encoder: Encoder, images: ImageSet, classifier: torch.Tensor, batch_size: int = 128,
                       use_cache: bool = True) -> float:
    """Fraction of ``images`` whose highest-cosine class row is their label (features disk-cached)."""
    from .features import extract_features

    if len(images) == 0:
        raise ProxyFDAError("zero-shot accuracy needs at least one image")
    if classifier.shape[0] != len(images.class_names):
        raise ProxyFDAError(f"the classifier has {classifier.shape[0]} classes but {images.spec} has "
                            f"{len(images.class_names)}; build it with text_classifier(encoder, images.class_names)")
    features = torch.from_numpy(extract_features(encoder, images, batch_size=batch_size, use_cache=use_cache))
    predicted = zero_shot_logits(features, classifier.cpu()).argmax(dim=1).numpy()
    return float(np.mean(predicted == images.labels))
