"""The fine-tuning loop: an encoder plus a linear head trained on one labelled image set, with the
regulariser of its method keeping the encoder close to its pre-trained self.

What each method adds comes from the method table (`proxyfda.methods`); what a run writes, and
where, from the run directory's owner (`proxyfda.runs`). `finetune` reads top to bottom: resolve the
config, build everything, then one loop of steps with evaluations and checkpoints at intervals.

Pre-trained features of the training images are computed once (and disk-cached) instead of
running the frozen encoder every step: without augmentation they never change, and this removes
most of the regularisers' overhead.

Under ``torchrun`` the same function runs on every process (`proxyfda.distributed`): each draws the
same global batch and trains on its share with DistributedDataParallel, a loss that relates the
batch's images to each other (FDA's kNN graph) sees the whole global batch, and rank 0 alone
evaluates and writes the run. The losses, gradients and weights equal a single process's on the same
global batch (docs/METHOD.md, "Several processes").
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .backbones import Encoder
from .config import FinetuneConfig, SafeConfig
from .data import ImageSet, balanced_sample, load_images, stratified_split
from .drift import compute_drift
from .errors import ProxyFDAError
from .device import resolve_device
from .encoders import create_encoder
from .features import extract_features
from .methods import get_method, method_options, resolve_config
from .runs import DIVERGED, SAFE_RESULT, Callback, RunResult, RunWriter, SilentWriter, check_run_dir
from .sampling import ClassBalancedSampler, EpochSampler

#: the probe set: up to this many class-balanced images of the eval set, whose features every
#: evaluation keeps (``probe/`` in the run directory) and scores against the pre-trained ones
PROBE_SIZE = 500
PROBE_K = 10
#: images per forward pass when a run evaluates (accuracy does not depend on it, memory does)
EVAL_BATCH = 256
#: the proxy generator's own Adam learning rate (it trains on its own loss, beside the encoder)
GENERATOR_LR = 1e-3


def set_train_mode(encoder: Encoder, bn_mode: str, stochastic_layers: bool = False) -> None:
    """Train mode for the encoder, with BatchNorm layers kept in eval mode when ``bn_mode='frozen'``
    and dropout-like layers off unless ``stochastic_layers``."""
    encoder.train()
    if bn_mode == "frozen":
        for module in encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    encoder.set_stochastic(stochastic_layers)


def lr_at(step: int, config: FinetuneConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to zero at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class EvalPass(NamedTuple):
    accuracy: float
    features: np.ndarray  # the encoder's features of every image, in order


@torch.no_grad()
def eval_pass(encoder: Encoder, head: nn.Module, images: ImageSet, batch_size: int = EVAL_BATCH) -> EvalPass:
    """Top-1 accuracy of encoder + head on ``images`` in eval mode, and the features it saw; every
    module's mode is restored afterwards (``encoder.train()`` would also unfreeze frozen BatchNorm layers)."""
    modes = [(module, module.training) for part in (encoder, head) for module in part.modules()]
    encoder.eval()
    head.eval()
    correct, features = 0, []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        feats = encoder(images.batch(idx, encoder.image_size).to(encoder.device))
        correct += int((head(feats).argmax(1).cpu().numpy() == images.labels[idx]).sum())
        features.append(feats.float().cpu().numpy())
    for module, training in modes:
        module.training = training
    return EvalPass(correct / len(images), np.concatenate(features))


def evaluate(encoder: Encoder, head: nn.Module, images: ImageSet, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of encoder + head on ``images`` in eval mode (see `eval_pass`)."""
    return eval_pass(encoder, head, images, batch_size).accuracy


def choose_probe(eval_set: ImageSet, seed: int) -> np.ndarray:
    """The rows of ``eval_set`` a run keeps as its probe set: up to `PROBE_SIZE`, class-balanced."""
    return balanced_sample(eval_set.labels, PROBE_SIZE, seed)


def probe_scores(pre: np.ndarray, now: np.ndarray, images: ImageSet, k: int = PROBE_K) -> dict[str, float]:
    """How much of the pre-trained probe space survives: mean overlap@k, CKNNA and linear CKA, as logged
    with every evaluation (``probe_overlap``, ``probe_cknna``, ``probe_cka``)."""
    metrics = compute_drift(pre, now, images.labels, images.class_names, min(k, len(pre) - 1)).metrics
    return {"probe_overlap": metrics["overlap_at_k_mean"], "probe_cknna": metrics.get("cknna", float("nan")),
            "probe_cka": metrics["linear_cka"]}


def checkpoint_state(encoder: Encoder, head: nn.Module, step: int, regularizer: nn.Module | None = None) -> dict:
    """What ``checkpoint.pt`` holds: the encoder's and the head's weights, the step they belong to and,
    for a regulariser with a state of its own (Proxy-FDA's generator, FDA's τ and b), ``"regularizer"``."""
    state = {"encoder": encoder.state_dict(), "head": head.state_dict(), "step": step}
    if regularizer is not None and regularizer.state_dict():
        state["regularizer"] = regularizer.state_dict()
    return state


def check_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` resolved (`resolve_config`), with its method's options checked by building what reads
    them (the regulariser, or SAFE's config) without an encoder: a bad option fails here, before any
    model is loaded or any file written."""
    config = resolve_config(config)
    method = get_method(config.method)
    options = method_options(config)
    if method.trainer == "safe":
        SafeConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size, weight_decay=config.weight_decay,
                   seed=config.seed, **options)
    elif method.regularizer is not None:
        from .losses import build_regularizer

        if method.regularizer == "l2sp":
            options["reference_state"] = {"check": torch.zeros(1)}
        build_regularizer(method.regularizer, **options)
    return config


def build_method_regularizer(config: FinetuneConfig, encoder: Encoder) -> nn.Module | None:
    """The regulariser of ``config.method`` with its options (None for methods without one)."""
    from .losses import build_regularizer

    name = get_method(config.method).regularizer
    options = method_options(config)
    if name is None:
        return None
    if name == "l2sp":
        options["reference_state"] = copy.deepcopy(encoder.state_dict())
    return build_regularizer(name, **options)


def linear_probe_head(features: np.ndarray, labels: np.ndarray, n_classes: int) -> nn.Linear:
    """LP-FT's first stage: a logistic-regression head fitted on frozen pre-trained features."""
    from sklearn.linear_model import LogisticRegression

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # a starting point for fine-tuning: it need not be polished
        warnings.simplefilter("ignore", ConvergenceWarning)  # pragma: no mutate: what is shown, not what is fitted
        probe = LogisticRegression(C=1.0, max_iter=300).fit(features, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # sklearn keeps one row for binary problems: the second class's logit
        coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)  # pragma: no mutate: any bias this low keeps absent classes from winning
        head.weight[probe.classes_] = torch.from_numpy(coef).float()
        head.bias[probe.classes_] = torch.from_numpy(intercept).float()
    return head


def make_head(config: FinetuneConfig, encoder: Encoder, train_set: ImageSet,
              pre_features: np.ndarray | None) -> nn.Linear:
    """The linear head: a fitted probe for methods whose head starts as one (LP-FT), else random."""
    n_classes = len(train_set.class_names)
    if get_method(config.method).head == "probe":
        return linear_probe_head(pre_features, train_set.labels, n_classes)
    return nn.Linear(encoder.feature_dim, n_classes)


def make_sampler(config: FinetuneConfig, train_set: ImageSet, pre_features: np.ndarray | None):
    """Shuffled epochs, or m classes × n images with hard class mining (``config.sampler``, resolved)."""
    if config.sampler == "epoch":
        return EpochSampler(len(train_set), config.batch_size, config.seed)
    m = min(config.classes_per_batch, len(train_set.class_names))
    n = max(1, config.batch_size // m)
    return ClassBalancedSampler(train_set.labels, m=m, n=n, features=pre_features, seed=config.seed)


def make_optimizers(config: FinetuneConfig, encoder: Encoder, head: nn.Module, regularizer: nn.Module | None):
    """AdamW over encoder + head (+ learnable τ / b without weight decay, which would drag them toward
    τ = 1, b = 0); a separate Adam for a proxy generator, which trains on its own loss."""
    groups = [{"params": list(encoder.parameters()) + list(head.parameters())}]
    generator_params: list[nn.Parameter] = []
    if regularizer is not None:
        generator_params = list(getattr(regularizer, "generator_parameters", list)())
        ids = {id(p) for p in generator_params}
        groups.append({"params": [p for p in regularizer.parameters() if id(p) not in ids], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    generator_opt = torch.optim.Adam(generator_params, lr=GENERATOR_LR) if generator_params else None
    return optimizer, generator_opt


class EncoderWithHead(nn.Module):
    """The encoder and the task head as one module, so DistributedDataParallel averages both's gradients."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(pixels)
        return feats, self.head(feats)


def _scalar_terms(terms: dict) -> dict:
    return {f"reg_{name}": value.item() for name, value in terms.items()
            if isinstance(value, torch.Tensor) and value.ndim == 0}


def finetune(config: FinetuneConfig, run_dir: str | Path, callback: Callback | None = None,
             stop: threading.Event | None = None, overwrite: bool = False) -> RunResult:
    """Fine-tune ``config.base_encoder`` on ``config.data`` and write the run to ``run_dir``.

    The config and the folder are checked before anything is loaded or written: ``run_dir`` must be new
    or empty, or hold a run to replace with ``overwrite`` (`proxyfda.runs.RunWriter`). ``stop`` is checked
    between steps; a stopped run keeps a loadable checkpoint of the step it reached. A non-finite loss
    (or weights) ends the run at once with status "diverged", keeping its last finite checkpoint.

    Under ``torchrun`` every process calls it alike; rank 0 alone writes ``run_dir`` (its summary records
    ``world_size``) and calls ``callback``, and every rank returns the same result. ``stop`` is for runs
    in one process (the app's).
    """
    config = check_config(config)
    check_run_dir(run_dir, overwrite)  # on every rank: a folder that will be refused stops them all
    method = get_method(config.method)
    if method.trainer == "safe":
        if dist.env_world_size() > 1:
            raise ProxyFDAError("SAFE trains in one process (it fits one small layer on cached maps); run "
                                "`proxyfda finetune --method safe` without torchrun")
        return _finetune_safe(config, Path(run_dir), callback, stop, overwrite)

    dist.init_from_env()  # under torchrun: join the other processes, each on its own GPU if there are any
    dist.barrier()  # no rank is still checking the folder when rank 0 creates it
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = resolve_device(config.device)
    encoder = create_encoder(config.base_encoder, image_size=config.image_size, device=device)
    train_set = load_images(config.data)
    eval_set = load_images(config.eval_data, n=config.eval_size, seed=config.seed)
    needs_pre = method.needs_pretrained_features or config.sampler == "balanced"
    pre_features = extract_features(encoder, train_set) if needs_pre else None
    pre_table = torch.from_numpy(pre_features).to(device) if pre_features is not None else None
    head = make_head(config, encoder, train_set, pre_features).to(device)
    regularizer = build_method_regularizer(config, encoder)
    if regularizer is not None:
        regularizer = regularizer.to(device)
        regularizer.record_stats = False  # the loop reads the loss terms; records only at evaluations
    optimizer, generator_opt = make_optimizers(config, encoder, head, regularizer)
    sampler = make_sampler(config, train_set, pre_features)
    check_batch_splits(sampler.batch_size)
    # LDIFS's original form compares internal activations with those of a frozen pre-trained copy
    frozen = copy.deepcopy(encoder).requires_grad_(False) if getattr(regularizer, "input_kind", "") == "taps" else None
    set_train_mode(encoder, config.bn_mode, config.stochastic_layers)
    # one module per process; under torchrun DDP averages its gradients over the processes
    model = dist.wrap(EncoderWithHead(encoder, head), sync_batchnorm=config.bn_mode == "train")

    probe_rows = choose_probe(eval_set, config.seed)
    probe_set = eval_set.subset(probe_rows)

    writer = RunWriter(run_dir, config, callback, overwrite) if dist.is_main() else SilentWriter(run_dir)
    with writer as run:
        run.save_probe_rows(probe_rows)

        def evaluation(step: int) -> float:
            """Accuracy on the eval set; the probe's features kept and scored against step 0's."""
            nonlocal pre_probe
            result = eval_pass(encoder, head, eval_set)
            probe = result.features[probe_rows]
            pre_probe = probe if pre_probe is None else pre_probe
            run.save_probe(step, probe)
            diagnostics = regularizer.diagnostics() if regularizer is not None and step > 0 else {}
            try:
                scores = probe_scores(pre_probe, probe, probe_set)
            except ProxyFDAError as exc:  # e.g. features collapsed to one point: the run goes on, and says so
                scores = {"probe_problem": str(exc)}
            run.log({"kind": "eval", "step": step, "accuracy": result.accuracy, **scores, **diagnostics})
            return result.accuracy

        pre_probe = None
        dist.on_main(evaluation, 0)  # the pre-trained encoder (with the starting head): where every curve begins
        step, accuracy, status = 0, None, "completed"
        for step in range(1, config.steps + 1):
            if stop is not None and stop.is_set():
                status, step = "stopped", step - 1
                break
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1, config)
            idx = sampler.next_batch()  # the global batch: the same on every rank (same sampler, same seed)
            mine = idx[dist.shard(len(idx))]  # this rank's share (all of it in one process)
            pixels = train_set.batch(mine, encoder.image_size).to(device)
            labels = torch.from_numpy(train_set.labels[mine]).to(device)

            with encoder.capture_taps() if frozen is not None else contextlib.nullcontext() as taps:
                feats, logits = model(pixels)
            task = F.cross_entropy(logits, labels)
            terms: dict = {}
            evaluating = step % config.eval_every == 0 or step == config.steps
            if regularizer is not None:
                regularizer.record_stats = evaluating  # e.g. the proxies' health, logged with the evaluation
                if regularizer.input_kind == "model":
                    inputs = (encoder,)
                elif regularizer.input_kind == "taps":
                    with torch.no_grad(), frozen.capture_taps() as taps_pre:
                        frozen(pixels)
                    inputs = (taps, taps_pre)
                elif regularizer.global_batch:  # a kNN graph over every rank's images, gradients flowing back
                    inputs = (dist.gather_rows(feats), pre_table[torch.from_numpy(idx).to(device)])
                else:
                    inputs = (feats, pre_table[torch.from_numpy(mine).to(device)])
                terms = regularizer(*inputs, return_terms=True)
            # the generator's term is computed on detached features: it trains the generator only
            loss = task + terms.get("loss", 0.0) + terms.get("generator", 0.0)
            # the global batch's figures (ranks' means of equal shares, averaged): what one process logs
            figures = dist.mean_over_ranks({"loss": loss.item(), "task": task.item(), **_scalar_terms(terms)})
            if not math.isfinite(figures["loss"]):  # nothing of this step is applied, and the run ends here
                run.log({"kind": "train", "step": step, "loss": figures["loss"], "task": figures["task"],
                         "diverged": True})
                status, step = DIVERGED, step - 1
                break

            optimizer.zero_grad(set_to_none=True)
            if generator_opt is not None:
                generator_opt.zero_grad(set_to_none=True)
            loss.backward()  # under torchrun DDP averages the encoder's and head's gradients over the ranks
            if regularizer is not None:
                dist.average_gradients(regularizer.parameters())  # the generator, learnable τ / b
            optimizer.step()
            if generator_opt is not None:
                generator_opt.step()
            run.log({"kind": "train", "step": step, **figures, "lr": optimizer.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - started})
            if evaluating and not finite_weights(encoder, head):
                run.log({"kind": "eval", "step": step, "diverged": True, "problem": "non-finite weights"})
                status, step = DIVERGED, step - 1
                break
            if evaluating:
                accuracy = dist.on_main(evaluation, step)
                run.save_checkpoint(checkpoint_state(encoder, head, step, regularizer))
        if status == "stopped" and step > 0 and finite_weights(encoder, head):
            run.save_checkpoint(checkpoint_state(encoder, head, step, regularizer))
        return run.finish(status, step, accuracy, world_size=dist.world_size())


def check_batch_splits(batch_size: int) -> None:
    """Refuse a global batch that does not split evenly over the processes of a distributed run (every
    rank must hold an equal share for the gathered batch and the averaged gradients to be the global ones)."""
    if batch_size % dist.world_size():
        raise ProxyFDAError(f"the batch of {batch_size} images does not split evenly over {dist.world_size()} "
                            "processes; choose a batch size (classes per batch × images per class) that is a "
                            "multiple of the number of processes")


def finite_weights(*modules: nn.Module) -> bool:
    """Whether every parameter and floating-point buffer of ``modules`` is finite (checked before a
    checkpoint is written: a run never saves NaN or infinite weights)."""
    return all(bool(torch.isfinite(t).all()) for module in modules
               for t in (*module.parameters(), *module.buffers()) if t.is_floating_point())


def _finetune_safe(config: FinetuneConfig, run_dir: Path, callback: Callback | None,
                   stop: threading.Event | None, overwrite: bool) -> RunResult:
    """SAFE: only the attention pooling of an open_clip ResNet trains; see proxyfda.safe.

    β is chosen on a stratified share of the training images (``val_fraction``); the run's accuracy
    is the SAFE encoder's zero-shot accuracy on ``eval_data``, which neither training nor β saw.
    """
    from .safe import fit_safe
    from .safe_encoder import apply_safe, save_safe
    from .zeroshot import text_classifier, zero_shot_accuracy

    safe_config = SafeConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                             weight_decay=config.weight_decay, seed=config.seed, **method_options(config))
    encoder = create_encoder(config.base_encoder, device=resolve_device(config.device))
    training_images = load_images(config.data)
    fit_idx, val_idx = stratified_split(training_images.labels, 1.0 - safe_config.val_fraction, config.seed)
    test_set = load_images(config.eval_data, n=config.eval_size, seed=config.seed)
    with RunWriter(run_dir, config, callback, overwrite) as run:
        def progress(record: dict) -> None:
            if record.get("stage") == "train":
                run.log({"kind": "train", **{k: v for k, v in record.items() if k != "stage"}})

        result = fit_safe(encoder, training_images.subset(fit_idx), training_images.subset(val_idx), safe_config,
                          progress=progress, stop=stop)
        save_safe(result, run.file(SAFE_RESULT))
        tuned = apply_safe(encoder, result)
        accuracy = zero_shot_accuracy(tuned, test_set, text_classifier(tuned, test_set.class_names,
                                                                       safe_config.templates))
        run.log({"kind": "eval", "step": result.steps_done, "accuracy": accuracy, "beta": result.beta,
                 "val_accuracy": result.val_accuracy[result.beta]})
        return run.finish(result.status, result.steps_done, accuracy)
