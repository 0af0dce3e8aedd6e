"""The SAFE encoder: CLIP's ResNet image tower with a fine-tuned attention pooling blended with the original.

SAFE (arXiv 2311.04464) trains only ``attnpool``, the attention layer that pools CLIP ResNet's dense
[C, h, w] trunk map into one joint-space vector (fitting: `proxyfda.safe`). What it produces, a
`SafeResult`, becomes an encoder here: the frozen trunk feeds both the tuned and the original
pooling, and their unit outputs are blended, ``f = normalize(β·u_ft + (1−β)·u_orig)``. β = 0 is
the original CLIP feature, β = 1 the fine-tuned one.

A result saved with `save_safe` loads back with `load_safe`, or as an encoder from the spec
``safe:/path/to/result.pt`` (resolved by `proxyfda.encoders.create_encoder`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Encoder, OpenClipEncoder, read_checkpoint
from .config import SafeConfig
from .data import ImageSet
from .errors import ProxyFDAError
from .features import Progress, extract_features
from .paths import atomic_write_bytes

SAFE_FORMAT = "proxyfda-safe-v1"


# ---------------------------------------------------------------------------------------------
# the frozen trunk and its dense maps


def open_clip_resnet(encoder: Encoder) -> nn.Module:
    """The open_clip ModifiedResNet image tower of ``encoder``, or an error saying why SAFE cannot use it."""
    from open_clip.modified_resnet import ModifiedResNet

    visual = getattr(encoder, "backbone", None)
    if not isinstance(encoder, OpenClipEncoder) or not isinstance(visual, ModifiedResNet):
        raise ProxyFDAError(
            f"SAFE fine-tunes the attention pooling of an open_clip ResNet image encoder, but '{encoder.spec}' is "
            f"{encoder.name} with a {type(visual).__name__} image tower; use an open_clip ResNet such as RN50: "
            "'open_clip:RN50:/path/to/weights'")
    return visual  # its input size always matches attnpool: create_encoder refuses other sizes


def _pool_side(attnpool: nn.Module) -> int:
    """Side of the dense map attnpool was built for (its positional embedding has side² + 1 rows)."""
    return math.isqrt(attnpool.positional_embedding.shape[0] - 1)


def resnet_trunk(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ModifiedResNet up to, not including, attnpool: normalised pixels -> the dense map [B, C, h, w]."""
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


class _DenseView(Encoder):
    """An encoder's ResNet cut before attnpool, flattened, so `extract_features` batches and caches it."""

    def __init__(self, encoder: Encoder, visual: nn.Module):
        side = _pool_side(visual.attnpool)
        channels = visual.attnpool.k_proj.in_features
        super().__init__(encoder.spec, encoder.name, visual, channels * side * side, encoder.image_size,
                         encoder.pixel_norm)
        self.dense_shape = (channels, side, side)
        self._hash = encoder.weights_hash()  # the trunk's weights are the encoder's: reuse its hash

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return resnet_trunk(self.backbone, pixels).flatten(1)

    def preprocessing_key(self) -> str:
        # keeps dense maps and pooled features of the same encoder apart in the feature cache
        return "dense-before-attnpool|" + super().preprocessing_key()


def dense_features(encoder: Encoder, images: ImageSet, batch_size: int = 64, progress: Progress | None = None,
                   use_cache: bool = False) -> torch.Tensor:
    """The dense maps [N, C, h, w] (CPU, float32) that feed ``encoder``'s attnpool, one trunk pass per batch.

    ``use_cache`` also keeps them in the content-keyed feature cache on disk (RN50: 400 kB per image).
    """
    view = _DenseView(encoder, open_clip_resnet(encoder))
    flat = extract_features(view, images, batch_size=batch_size, progress=progress, use_cache=use_cache)
    return torch.from_numpy(flat).view(len(images), *view.dense_shape)


# ---------------------------------------------------------------------------------------------
# the head: tuned and original pooling, blended


def blend(tuned: torch.Tensor, original: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """SAFE's residual blend of unit pooled features: normalize(β·tuned + (1−β)·original).

    β = 0 gives the original CLIP feature, β = 1 the fine-tuned one.
    """
    return F.normalize(beta * tuned + (1.0 - beta) * original, dim=-1)


class SafeHead(nn.Module):
    """A trainable copy of CLIP's attention pooling next to a frozen copy of the original."""

    def __init__(self, attnpool: nn.Module):
        super().__init__()
        self.tuned = copy.deepcopy(attnpool).requires_grad_(True)
        self.original = copy.deepcopy(attnpool).requires_grad_(False)

    def tuned_features(self, dense: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tuned(dense), dim=-1)

    @torch.no_grad()
    def original_features(self, dense: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.original(dense), dim=-1)

    def forward(self, dense: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
        """Dense maps [B, C, h, w] -> blended unit features [B, D]."""
        return blend(self.tuned_features(dense), self.original_features(dense), beta)


class SafeVisual(nn.Module):
    """A frozen copy of CLIP's ResNet trunk feeding a SAFE head: pixels -> blended unit features.

    β is a buffer, so it is part of the state dict and of the encoder's weights hash.
    """

    def __init__(self, visual: nn.Module, head: SafeHead, beta: float):
        super().__init__()
        self.trunk = copy.deepcopy(visual)
        self.trunk.attnpool = nn.Identity()  # the pooling lives in the head
        self.head = head
        self.register_buffer("beta", torch.tensor(float(beta), dtype=torch.float64))
        self.requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(resnet_trunk(self.trunk, pixels), self.beta)


# ---------------------------------------------------------------------------------------------
# the result of a fit, and the encoder it makes


@dataclass
class SafeResult:
    """A trained SAFE head and how it was chosen; `apply_safe` turns it into an encoder."""

    base_spec: str
    image_size: int
    class_names: list[str]
    head_state: dict[str, torch.Tensor]  # SafeHead.state_dict(): tuned.* and original.*
    beta: float
    val_accuracy: dict[float, float]  # β -> zero-shot accuracy on the validation split
    history: list[dict]
    config: SafeConfig
    status: str  # "completed" or "stopped"
    steps_done: int
    path: Path | None = None  # where save_safe wrote it, if it did


def apply_safe(encoder: Encoder, result: SafeResult) -> OpenClipEncoder:
    """A new encoder whose feature is the SAFE blend at ``result.beta``; ``encoder`` is left untouched.

    It keeps the base's text tower (zero-shot works on it), image size and pixel normalisation;
    its weights hash covers the trunk, both poolings and β.
    """
    visual = open_clip_resnet(encoder)
    head = SafeHead(visual.attnpool)
    _check_same_base(head, result, encoder)
    head.load_state_dict(result.head_state)
    beta = float(result.beta)
    spec = f"safe:{result.path}" if result.path else f"{encoder.spec}+safe(beta={beta:g})"
    safe = OpenClipEncoder(spec, f"{encoder.name} + SAFE (β={beta:g})", SafeVisual(visual, head, beta),
                           feature_dim=encoder.feature_dim, image_size=encoder.image_size,
                           pixel_norm=encoder.pixel_norm, clip_model=encoder.clip_model[0], arch=encoder.arch)
    return safe.to(encoder.device).eval()


def _check_same_base(head: SafeHead, result: SafeResult, encoder: Encoder) -> None:
    """Refuse to graft a head onto a CLIP whose original pooling differs from the one it was trained beside."""
    for key, value in head.state_dict().items():
        saved = result.head_state.get(key)
        if saved is None or saved.shape != value.shape:
            raise ProxyFDAError(f"this SAFE result does not fit '{encoder.spec}' (attention pooling '{key}' "
                                f"differs in shape); it was trained on '{result.base_spec}'")
        if key.startswith("original.") and not torch.equal(saved, value.detach().cpu()):
            raise ProxyFDAError(f"this SAFE result was trained on other CLIP weights ('{result.base_spec}') than "
                                f"'{encoder.spec}' has; apply it to the encoder it was trained on")


def save_safe(result: SafeResult, path: str | Path) -> Path:
    """Write ``result`` atomically; it loads back with `load_safe` or as the encoder ``safe:<path>``."""
    path = Path(path).expanduser().resolve()
    payload: dict[str, Any] = {
        "format": SAFE_FORMAT, "base_spec": result.base_spec, "image_size": result.image_size,
        "class_names": list(result.class_names), "head_state": result.head_state, "beta": result.beta,
        "val_accuracy": result.val_accuracy, "history": result.history, "config": result.config.to_dict(),
        "status": result.status, "steps_done": result.steps_done,
    }
    atomic_write_bytes(path, lambda handle: torch.save(payload, handle))
    result.path = path
    return path


def load_safe(path: str | Path) -> SafeResult:
    """Read a file written by `save_safe`."""
    path = Path(path).expanduser().resolve()
    payload = read_checkpoint(path)
    if payload.get("format") != SAFE_FORMAT:
        raise ProxyFDAError(f"'{path}' is not a SAFE result (no '{SAFE_FORMAT}' marker); "
                            "write one with proxyfda.safe.save_safe")
    fields = {k: v for k, v in payload.items() if k != "format"}
    fields["config"] = SafeConfig.from_dict(fields["config"])
    return SafeResult(**fields, path=path)
