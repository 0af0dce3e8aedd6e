"""The fine-tuning loop: an encoder plus a linear head trained on one labelled image set, with an
optional regulariser that keeps the encoder close to its pre-trained self.

A run directory holds ``config.json`` (the FinetuneConfig), ``history.jsonl`` (one JSON record
per logged step or evaluation), ``checkpoint.pt`` (written atomically: a run killed mid-write
leaves the previous checkpoint loadable) and ``summary.json`` (status and final figures). The
directory loads back as an encoder with the spec ``run:<dir>``.

Methods (``FinetuneConfig.method``):

=============  ==================================================================================
naive          task loss only
l2sp           + α‖θ − θ0‖² on the encoder's weights
ldifs          + α · distance between L2-normalised fine-tuned and pre-trained features
lp-ft          the head starts as a linear probe fitted on frozen pre-trained features, then naive
fda            + λ · FDA: the batch's pre-trained kNN structure, kept in the fine-tuned space
proxy-fda      + λ · FDA over real features and generated proxies (the generator trains alongside)
safe           CLIP ResNets only: tune the attention pooling, blend at inference (proxyfda.safe)
=============  ==================================================================================

Pre-trained features of the training images are computed once (and disk-cached) instead of
running the frozen encoder every step: without augmentation they never change, and this removes
most of the regularisers' overhead.
"""

from __future__ import annotations

import copy
import json
import math
import random
import threading
import time
import warnings
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
from .encoders import RUN_CHECKPOINT, RUN_CONFIG, RUN_SAFE, Encoder, create_encoder
from .errors import ProxyFDAError
from .features import extract_features
from .paths import atomic_write_bytes

METHODS = ("naive", "l2sp", "ldifs", "lp-ft", "fda", "proxy-fda", "safe")
#: the regulariser each method adds (proxyfda.losses registry name), and its default options
METHOD_REGULARIZER = {"l2sp": "l2sp", "ldifs": "ldifs", "fda": "fda", "proxy-fda": "proxy-fda"}
METHOD_DEFAULTS: dict[str, dict] = {"l2sp": {"alpha": 0.5}, "ldifs": {"alpha": 10.0}, "fda": {}, "proxy-fda": {}}
BATCH_GRAPH_METHODS = ("fda", "proxy-fda")  # build a kNN graph inside the batch: want balanced batches

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

    def next_batch(self) -> np.ndarray:
        if self.position + self.batch_size > self.n:
            self.order, self.position = self.rng.permutation(self.n), 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch


@torch.no_grad()
def evaluate(encoder: Encoder, head: nn.Module, images: ImageSet, batch_size: int = 256) -> float:
    """Top-1 accuracy of encoder + head on ``images`` in eval mode; every module's mode is restored
    afterwards (``encoder.train()`` would also unfreeze frozen BatchNorm layers)."""
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        logits = head(encoder(images.batch(idx, encoder.image_size).to(encoder.device)))
        correct += int((logits.argmax(1).cpu().numpy() == images.labels[idx]).sum())
    for module, training in modes:
        module.training = training
    return correct / len(images)


def save_checkpoint(run_dir: Path, encoder: Encoder, head: nn.Module, step: int) -> None:
    state = {"encoder": encoder.state_dict(), "head": head.state_dict(), "step": step}
    atomic_write_bytes(run_dir / RUN_CHECKPOINT, lambda handle: torch.save(state, handle))


def regularizer_options(config: FinetuneConfig) -> dict:
    """The method's default regulariser options, overridden by ``config.reg_options``."""
    return {**METHOD_DEFAULTS.get(config.method, {}), **config.reg_options}


def build_method_regularizer(config: FinetuneConfig, encoder: Encoder) -> nn.Module | None:
    """The regulariser module of ``config.method`` (None for naive and lp-ft)."""
    from .losses import build_regularizer

    name = METHOD_REGULARIZER.get(config.method)
    if name is None:
        if config.reg_options:
            raise ProxyFDAError(f"method '{config.method}' has no regulariser, so reg_options "
                                f"{sorted(config.reg_options)} would be ignored; remove them")
        return None
    options = regularizer_options(config)
    if name == "l2sp":
        options["reference_state"] = copy.deepcopy(encoder.state_dict())
    return build_regularizer(name, **options)


def linear_probe_head(features: np.ndarray, labels: np.ndarray, n_classes: int) -> nn.Linear:
    """LP-FT's first stage: a logistic-regression head fitted on frozen pre-trained features."""
    from sklearn.linear_model import LogisticRegression

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # a starting point for fine-tuning: it need not be polished
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(C=1.0, max_iter=300).fit(features, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # sklearn keeps one row for binary problems: the second class's logit
        coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)  # classes absent from the training data never win
        head.weight[probe.classes_] = torch.from_numpy(coef).float()
        head.bias[probe.classes_] = torch.from_numpy(intercept).float()
    return head


def make_sampler(config: FinetuneConfig, train_set: ImageSet, pre_features: np.ndarray | None):
    from .sampling import ClassBalancedSampler

    kind = config.sampler
    if kind == "auto":
        kind = "balanced" if config.method in BATCH_GRAPH_METHODS else "epoch"
    if kind == "epoch":
        return EpochSampler(len(train_set), config.batch_size, config.seed)
    m = min(config.classes_per_batch, len(train_set.class_names))
    n = max(1, config.batch_size // m)
    return ClassBalancedSampler(train_set.labels, m=m, n=n, features=pre_features, seed=config.seed)


def _scalar_terms(terms: dict) -> dict:
    return {f"reg_{name}": value.item() for name, value in terms.items()
            if isinstance(value, torch.Tensor) and value.ndim == 0}


def finetune(config: FinetuneConfig, run_dir: str | Path, callback: Callback | None = None,
             stop: threading.Event | None = None) -> RunResult:
    """Fine-tune ``config.base_encoder`` on ``config.data`` and write the run to ``run_dir``.

    ``stop`` is checked between steps; a stopped run keeps a loadable checkpoint of the step
    it reached.
    """
    if config.method not in METHODS:
        raise ProxyFDAError(f"unknown fine-tuning method '{config.method}'; available: {', '.join(METHODS)}")
    if config.method == "safe":
        return _finetune_safe(config, Path(run_dir), callback, stop)
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
    n_classes = len(train_set.class_names)

    needs_pre = config.method in ("ldifs", "fda", "proxy-fda", "lp-ft") or config.sampler == "balanced"
    pre_features = extract_features(encoder, train_set) if needs_pre else None
    pre_table = torch.from_numpy(pre_features).to(device) if pre_features is not None else None

    if config.method == "lp-ft":
        head = linear_probe_head(pre_features, train_set.labels, n_classes).to(device)
    else:
        head = nn.Linear(encoder.feature_dim, n_classes).to(device)
    regularizer = build_method_regularizer(config, encoder)
    groups = [{"params": list(encoder.parameters()) + list(head.parameters())}]
    generator_params: list[nn.Parameter] = []
    if regularizer is not None:
        regularizer = regularizer.to(device)
        regularizer.record_stats = False  # the training loop reads the loss terms, not the records
        generator_params = list(getattr(regularizer, "generator_parameters", list)())
        ids = {id(p) for p in generator_params}
        # learnable τ / b: no weight decay, which would drag them toward τ = 1, b = 0
        groups.append({"params": [p for p in regularizer.parameters() if id(p) not in ids], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    generator_opt = torch.optim.Adam(generator_params, lr=1e-3) if generator_params else None
    sampler = make_sampler(config, train_set, pre_features)
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
            idx = sampler.next_batch()
            pixels = train_set.batch(idx, encoder.image_size).to(device)
            labels = torch.from_numpy(train_set.labels[idx]).to(device)

            feats = encoder(pixels)
            task = F.cross_entropy(head(feats), labels)
            terms: dict = {}
            if regularizer is not None:
                inputs = ((encoder,) if regularizer.input_kind == "model"
                          else (feats, pre_table[torch.from_numpy(idx).to(device)]))
                terms = regularizer(*inputs, return_terms=True)
            # the generator's term is computed on detached features: it trains the generator only
            loss = task + terms.get("loss", 0.0) + terms.get("generator", 0.0)

            optimizer.zero_grad(set_to_none=True)
            if generator_opt is not None:
                generator_opt.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if generator_opt is not None:
                generator_opt.step()
            log({"kind": "train", "step": step, "loss": loss.item(), "task": task.item(), **_scalar_terms(terms),
                 "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started})
            if step % config.eval_every == 0 or step == config.steps:
                accuracy = evaluate(encoder, head, eval_set)
                log({"kind": "eval", "step": step, "accuracy": accuracy})
                save_checkpoint(run_dir, encoder, head, step)
        if status == "stopped" and step > 0:
            save_checkpoint(run_dir, encoder, head, step)
    finally:
        history.close()
    return _finish(run_dir, status, step, accuracy)


def _finish(run_dir: Path, status: str, step: int, accuracy: float | None) -> RunResult:
    summary = {"status": status, "steps_done": step, "final_eval_accuracy": accuracy}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, status, step, accuracy)


def _finetune_safe(config: FinetuneConfig, run_dir: Path, callback: Callback | None,
                   stop: threading.Event | None) -> RunResult:
    """SAFE: only the attention pooling of an open_clip ResNet trains; see proxyfda.safe."""
    from .safe import SafeConfig, fit_safe, save_safe

    safe_config = SafeConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size, seed=config.seed)
    encoder = create_encoder(config.base_encoder, device=resolve_device(config.device))
    train_set = load_images(config.data)
    val_set = load_images(config.eval_data, n=config.eval_size, seed=config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / RUN_CONFIG)
    records: list[dict] = []

    def progress(record: dict) -> None:
        if record.get("stage") == "train":
            entry = {"kind": "train", **{k: v for k, v in record.items() if k != "stage"}}
            records.append(entry)
            if callback:
                callback(entry)

    result = fit_safe(encoder, train_set, val_set, safe_config, progress=progress, stop=stop)
    save_safe(result, run_dir / RUN_SAFE)
    accuracy = result.val_accuracy.get(result.beta)
    with (run_dir / "history.jsonl").open("w") as history:
        for entry in records + [{"kind": "eval", "step": result.steps_done, "accuracy": accuracy, "beta": result.beta}]:
            history.write(json.dumps(entry) + "\n")
    return _finish(run_dir, result.status, result.steps_done, accuracy)


def wise_run(run_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """WiSE-FT of a finished run: a new run directory whose encoder is (1−α)·θ0 + α·θ_ft.

    The head is the fine-tuned run's; ``wise.json`` records the source run and α.
    """
    from .interpolation import wise_ft

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = FinetuneConfig.load(run_dir / RUN_CONFIG)
    if config.method == "safe":
        raise ProxyFDAError("SAFE runs blend their pooling already (β); WiSE-FT applies to full fine-tunes")
    finetuned = create_encoder(f"run:{run_dir}")
    pretrained = create_encoder(config.base_encoder, image_size=finetuned.image_size)
    mixed = wise_ft(pretrained, finetuned, alpha)
    state = torch.load(run_dir / RUN_CHECKPOINT, map_location="cpu", weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / RUN_CONFIG)
    atomic_write_bytes(out_dir / RUN_CHECKPOINT, lambda handle: torch.save(
        {"encoder": mixed.state_dict(), "head": state["head"], "step": state["step"]}, handle))
    (out_dir / "wise.json").write_text(json.dumps({"source": str(run_dir), "alpha": alpha}, indent=2) + "\n")
    return _finish(out_dir, "completed", state["step"], None).run_dir
