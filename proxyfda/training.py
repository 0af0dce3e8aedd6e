"""The fine-tuning loop: an encoder plus a linear head trained on one labelled image set.

A run directory holds ``config.json`` (the FinetuneConfig), ``history.jsonl`` (one JSON record
per logged step or evaluation), ``checkpoint.pt`` (written atomically: a run killed mid-write
leaves the previous checkpoint loadable) and ``summary.json`` (status and final figures). The
directory loads back as an encoder with the spec ``run:<dir>``.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import FinetuneConfig
from .data import ImageSet, load_images
from .device import resolve_device
from .encoders import RUN_CHECKPOINT, RUN_CONFIG, Encoder, create_encoder
from .errors import ProxyFDAError
from .paths import atomic_write_bytes

METHODS = ("naive",)

#: callback(record) — called with every history record (train steps and evaluations)
Callback = Callable[[dict], None]


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "completed" or "stopped"
    steps_done: int
    final_eval_accuracy: float | None


def set_train_mode(encoder: Encoder, bn_mode: str) -> None:
    """Train mode for the encoder, with BatchNorm layers kept in eval mode when ``bn_mode='frozen'``."""
    encoder.train()
    if bn_mode == "frozen":
        for module in encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def lr_at(step: int, config: FinetuneConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to zero at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler:
    """Endless shuffled mini-batches of indices, reshuffled every epoch (seeded)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.default_rng(seed)
        self.order, self.position = self.rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.position + self.batch_size > self.n:
            self.order, self.position = self.rng.permutation(self.n), 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch


@torch.no_grad()
def evaluate(encoder: Encoder, head: nn.Module, images: ImageSet, batch_size: int = 256) -> float:
    """Top-1 accuracy of encoder + head on ``images`` (eval mode, restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        logits = head(encoder(images.batch(idx, encoder.image_size).to(encoder.device)))
        correct += int((logits.argmax(1).cpu().numpy() == images.labels[idx]).sum())
    encoder.train(was_training)
    return correct / len(images)


def save_checkpoint(run_dir: Path, encoder: Encoder, head: nn.Module, step: int) -> None:
    state = {"encoder": encoder.state_dict(), "head": head.state_dict(), "step": step}
    atomic_write_bytes(run_dir / RUN_CHECKPOINT, lambda handle: torch.save(state, handle))


def finetune(config: FinetuneConfig, run_dir: str | Path, callback: Callback | None = None,
             stop: threading.Event | None = None) -> RunResult:
    """Fine-tune ``config.base_encoder`` on ``config.data`` and write the run to ``run_dir``.

    ``stop`` is checked between steps; a stopped run keeps a loadable checkpoint of the step
    it reached.
    """
    if config.method not in METHODS:
        raise ProxyFDAError(f"unknown fine-tuning method '{config.method}'; available: {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / RUN_CONFIG)
    history = (run_dir / "history.jsonl").open("w")

    def log(record: dict) -> None:
        history.write(json.dumps(record) + "\n")
        history.flush()
        if callback:
            callback(record)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = resolve_device(config.device)
    encoder = create_encoder(config.base_encoder, image_size=config.image_size, device=device)
    train_set = load_images(config.data)
    eval_set = load_images(config.eval_data, n=config.eval_size, seed=config.seed)
    head = nn.Linear(encoder.feature_dim, len(train_set.class_names)).to(device)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    sampler = EpochSampler(len(train_set), config.batch_size, config.seed)
    set_train_mode(encoder, config.bn_mode)

    step, accuracy, status = 0, None, "completed"
    try:
        for step in range(1, config.steps + 1):
            if stop is not None and stop.is_set():
                status, step = "stopped", step - 1
                break
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1, config)
            idx = sampler.next()
            pixels = train_set.batch(idx, encoder.image_size).to(device)
            labels = torch.from_numpy(train_set.labels[idx]).to(device)
            loss = F.cross_entropy(head(encoder(pixels)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log({"kind": "train", "step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                 "seconds": time.perf_counter() - started})
            if step % config.eval_every == 0 or step == config.steps:
                accuracy = evaluate(encoder, head, eval_set)
                log({"kind": "eval", "step": step, "accuracy": accuracy})
                save_checkpoint(run_dir, encoder, head, step)
        if status == "stopped" and step > 0:
            save_checkpoint(run_dir, encoder, head, step)
    finally:
        history.close()
    summary = {"status": status, "steps_done": step, "final_eval_accuracy": accuracy}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, status, step, accuracy)
