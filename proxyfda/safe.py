"""SAFE (arXiv 2311.04464): few-shot CLIP adaptation that fine-tunes only the attention pooling.

CLIP's ResNet image tower (open_clip ``ModifiedResNet``) ends in ``attnpool``, an attention
layer that pools the dense [C, h, w] trunk map into one joint-space vector. SAFE trains a copy
of that layer and leaves everything else frozen; at inference it blends what the tuned and the
original pooling produce (see `blend`), with β picked on a validation split, and classifies by
cosine against CLIP's zero-shot text rows.

Our choices, where the paper leaves room:

* Blend: ``f = normalize(β·u_ft + (1−β)·u_orig)`` of the *unit* pooled features, so β weighs
  two directions and not two norms (cross-entropy on cosines leaves the tuned output's norm
  uncontrolled). β = 0 is the original CLIP feature, β = 1 the fine-tuned one.
* Training uses the fine-tuned pooled feature alone (β = 1): the blend is a post-hoc
  interpolation, so the β search compares mixtures of one fixed tuned layer.
* Logits: ``100 · cos`` (the temperature the released CLIP checkpoints saturate at, fixed so a
  randomly initialised model trains in the same regime); text rows stay fixed.
* The trunk is frozen, so its dense maps are computed once per image (no augmentation) and
  training costs only attnpool forward/backward passes.

A result saved with `save_safe` loads as an encoder from the spec ``safe:/path/to/result.pt``
(once this module is imported), so the drift explorer can compare it like any other encoder.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import JsonConfig
from .data import ImageSet
from .encoders import Encoder, OpenClipEncoder, create_encoder, read_checkpoint, register_encoder
from .errors import ProxyFDAError
from .features import Progress, extract_features
from .paths import atomic_write_bytes
from .training import EpochSampler
from .zeroshot import CLIP_LOGIT_SCALE, DEFAULT_TEMPLATES, text_classifier, zero_shot_logits

#: callback(record) — every record fit_safe produces: feature extraction, train steps, β selection
Callback = Callable[[dict], None]

DEFAULT_BETA_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))
SAFE_FORMAT = "proxyfda-safe-v1"


@dataclass(frozen=True)
class SafeConfig(JsonConfig):
    """How SAFE trains the attention pooling and picks β."""

    steps: int = 200
    lr: float = 1e-4  # AdamW on pre-trained weights, cosine-decayed to 0
    weight_decay: float = 0.0  # decoupled decay would pull pre-trained weights to 0, not to CLIP's
    batch_size: int = 32
    beta_grid: tuple[float, ...] = DEFAULT_BETA_GRID
    label_smoothing: float = 0.1  # a few shots per class overfit fast
    seed: int = 0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    logit_scale: float = CLIP_LOGIT_SCALE
    cache_dense: bool = False  # also keep the dense maps on disk (keyed by weights and images)

    def __post_init__(self):
        # JSON gives lists back; the config stays hashable and comparable with tuples.
        object.__setattr__(self, "beta_grid", tuple(float(b) for b in self.beta_grid))
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ProxyFDAError(f"SAFE needs steps >= 0, batch_size >= 1 and lr > 0; got steps={self.steps}, "
                                f"batch_size={self.batch_size}, lr={self.lr}")
        if not self.beta_grid or any(not 0.0 <= b <= 1.0 for b in self.beta_grid):
            raise ProxyFDAError(f"beta_grid must be a non-empty list of values in [0, 1], got {list(self.beta_grid)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ProxyFDAError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


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
# training and β selection


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


def fit_safe(encoder: Encoder, train: ImageSet, val: ImageSet, config: SafeConfig = SafeConfig(),
             progress: Callback | None = None, stop: threading.Event | None = None) -> SafeResult:
    """Train SAFE's attention pooling on ``train`` and pick β on ``val``; ``encoder`` is left untouched.

    ``progress`` receives every record (also kept in ``history`` when it is a train step);
    ``stop`` is checked between steps, and a stopped fit still picks β for the head it has.
    """
    visual = open_clip_resnet(encoder)
    _check_splits(train, val)
    say = progress or (lambda record: None)
    classifier = text_classifier(encoder, train.class_names, config.templates)
    dense_train, dense_val = (_dense_for_fit(encoder, images, name, config, say)
                              for name, images in (("train", train), ("val", val)))
    head = SafeHead(visual.attnpool).to(encoder.device)
    history = _train(head, dense_train, train.labels, classifier, config, say, stop)
    accuracy = beta_accuracies(head, dense_val, val.labels, classifier, config.beta_grid)
    beta = choose_beta(accuracy)
    say({"stage": "select", "beta": beta, "val_accuracy": accuracy})
    return SafeResult(base_spec=encoder.spec, image_size=encoder.image_size, class_names=list(train.class_names),
                      head_state={k: v.detach().cpu().clone() for k, v in head.state_dict().items()}, beta=beta,
                      val_accuracy=accuracy, history=history, config=config,
                      status="completed" if len(history) == config.steps else "stopped", steps_done=len(history))


def _check_splits(train: ImageSet, val: ImageSet) -> None:
    if len(train) == 0 or len(val) == 0:
        raise ProxyFDAError(f"SAFE needs images in both splits; train has {len(train)}, validation {len(val)}")
    if list(train.class_names) != list(val.class_names):
        raise ProxyFDAError(f"the validation set's classes {val.class_names} differ from the training set's "
                            f"{train.class_names}; take both splits from the same data set")


def _dense_for_fit(encoder: Encoder, images: ImageSet, split: str, config: SafeConfig, say: Callback) -> torch.Tensor:
    def report(done: int, total: int) -> None:
        say({"stage": "features", "split": split, "done": done, "total": total})

    return dense_features(encoder, images, progress=report, use_cache=config.cache_dense)


def _train(head: SafeHead, dense: torch.Tensor, labels: np.ndarray, classifier: torch.Tensor, config: SafeConfig,
           say: Callback, stop: threading.Event | None) -> list[dict]:
    """Cross-entropy of the cosine classifier on the tuned pooling alone; only ``head.tuned`` learns."""
    device = classifier.device
    targets = torch.as_tensor(labels, dtype=torch.long)
    sampler = EpochSampler(len(targets), min(config.batch_size, len(targets)), config.seed)
    optimizer = torch.optim.AdamW(head.tuned.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.steps))
    history: list[dict] = []
    started = time.perf_counter()
    for step in range(config.steps):
        if stop is not None and stop.is_set():
            break
        batch = sampler.next_batch()
        y = targets[batch].to(device)
        logits = zero_shot_logits(head.tuned(dense[batch].to(device)), classifier, config.logit_scale)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"stage": "train", "step": step + 1, "loss": float(loss.detach()), "lr": schedule.get_last_lr()[0],
                  "train_accuracy": float((logits.argmax(1) == y).double().mean()),
                  "seconds": time.perf_counter() - started}
        schedule.step()
        history.append(record)
        say(record)
    return history


@torch.no_grad()
def beta_accuracies(head: SafeHead, dense: torch.Tensor, labels: np.ndarray, classifier: torch.Tensor,
                    beta_grid: tuple[float, ...], batch_size: int = 256) -> dict[float, float]:
    """Zero-shot accuracy of the blend at every β; the two poolings run once, the blends are cheap."""
    device = classifier.device
    tuned, original = [], []
    for start in range(0, len(dense), batch_size):
        chunk = dense[start:start + batch_size].to(device)
        tuned.append(head.tuned_features(chunk))
        original.append(head.original_features(chunk))
    tuned_all, original_all = torch.cat(tuned), torch.cat(original)
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)

    def accuracy(beta: float) -> float:
        predicted = zero_shot_logits(blend(tuned_all, original_all, beta), classifier).argmax(1)
        return float((predicted == targets).double().mean())

    return {float(beta): accuracy(beta) for beta in beta_grid}


def choose_beta(accuracy: dict[float, float]) -> float:
    """The β of highest validation accuracy; ties go to the smallest β, the one closest to CLIP."""
    best = max(accuracy.values())
    return min(beta for beta, value in accuracy.items() if value == best)


# ---------------------------------------------------------------------------------------------
# the SAFE encoder, saving and loading


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


@register_encoder("safe")
def _build_safe(arg: str, image_size: int | None, load_weights: bool, spec: str) -> OpenClipEncoder:
    # A SAFE encoder is defined by its saved head, so it is always loaded (load_weights is moot).
    if not arg:
        raise ProxyFDAError("SAFE specs look like 'safe:/path/to/result.pt' (a file written by save_safe)")
    result = load_safe(arg)
    base = create_encoder(result.base_spec, image_size=image_size or result.image_size)
    encoder = apply_safe(base, result)
    encoder.spec = spec
    return encoder
