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

What a fit produces, a `SafeResult`, becomes an encoder in `proxyfda.safe_encoder` (also from the
spec ``safe:/path/to/result.pt``), so the drift explorer compares it like any other encoder.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Encoder
from .config import SafeConfig
from .data import ImageSet
from .errors import ProxyFDAError
from .safe_encoder import SafeHead, SafeResult, blend, dense_features, open_clip_resnet
from .sampling import EpochSampler
from .zeroshot import text_classifier, zero_shot_logits

#: callback(record) — every record fit_safe produces: feature extraction, train steps, β selection
Callback = Callable[[dict], None]


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
