"""The fine-tuning loop: a real short run, its run directory, stopping, and crash-safe checkpoints."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from proxyfda.config import FinetuneConfig
from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.methods import resolve_config
from proxyfda.paths import atomic_write_bytes
from proxyfda.runs import Run
from proxyfda.training import finetune, lr_at

from conftest import TINY_FINETUNE


def test_run_directory_contents(tiny_run):
    config = FinetuneConfig.load(tiny_run / "config.json")
    assert config == resolve_config(TINY_FINETUNE)  # saved with every method default filled in
    assert config.weight_decay == 0.01 and config.sampler == "epoch"
    records = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 4]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 4
    assert torch.load(tiny_run / "checkpoint.pt", weights_only=True)["step"] == 4


def test_stop_request_keeps_a_loadable_checkpoint(tmp_path):
    stop = threading.Event()

    def stop_after_three(record):
        if record["kind"] == "train" and record["step"] == 3:
            stop.set()

    result = finetune(TINY_FINETUNE.replace(steps=20, eval_every=10), tmp_path / "run", callback=stop_after_three,
                      stop=stop)
    assert result.status == "stopped" and result.steps_done == 3
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    create_encoder(f"run:{tmp_path / 'run'}")


def test_a_write_that_dies_half_way_leaves_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, lambda handle: handle.write(b"old"))

    def crash(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_schedule_warms_up_then_decays_to_zero():
    config = FinetuneConfig(lr=1.0, steps=100, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(0.1) and lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.5) and lr_at(100, config) == pytest.approx(0.0)


def test_config_errors():
    with pytest.raises(ProxyFDAError, match="unknown FinetuneConfig option"):
        FinetuneConfig.from_dict({"stepz": 3})
    with pytest.raises(ProxyFDAError, match="bn_mode"):
        FinetuneConfig(bn_mode="sometimes")
    with pytest.raises(ProxyFDAError, match="unknown fine-tuning method"):
        finetune(TINY_FINETUNE.replace(method="magic"), "/tmp/never-written")


def test_frozen_batchnorm_stays_frozen_through_evaluations(tiny_run):
    """Evaluations between steps must not put frozen BatchNorm layers back in train mode."""
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)["encoder"]
    base = create_encoder("efficientnet-lite0", image_size=32).state_dict()
    tracked = [k for k in state if k.endswith("num_batches_tracked")]
    assert tracked and all(torch.equal(state[k], base[k]) for k in tracked)
    assert all(torch.equal(state[k], base[k]) for k in state if "running_" in k)


# ---- evaluate: a stub encoder + head with a known accuracy --------------------------------------------

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from proxyfda.data import ImageSet  # noqa: E402
from proxyfda.training import evaluate  # noqa: E402


class BrightnessEncoder(nn.Module):
    """Feature = mean pixel value in [0, 1]; records every module's training flag at each call."""

    image_size = 8

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.norm = nn.BatchNorm1d(1)
        self.drop = nn.Dropout(0.5)
        self.modes_seen: list[list[bool]] = []
        self.batch_sizes: list[int] = []

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append([m.training for m in self.modules()])
        self.batch_sizes.append(len(images))
        assert images.shape[1:] == (3, 8, 8)
        return self.scale * images.mean(dim=(1, 2, 3))[:, None]


class ThresholdHead(nn.Module):
    """Class 1 when the brightness exceeds 0.5."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - feats, feats - 0.5], dim=1)


BRIGHTNESS = [10, 50, 100, 200, 250, 30, 220, 140, 90, 180]  # predicted: 0 0 0 1 1 0 1 1 0 1
TRUE_LABELS = [0, 1, 0, 1, 0, 0, 1, 0, 0, 1]  # wrong at 1, 4, 7: 7 of 10 correct


def brightness_images() -> ImageSet:
    pixels = np.stack([np.full((8, 8, 3), v, dtype=np.uint8) for v in BRIGHTNESS])
    return ImageSet(spec="stub", labels=np.array(TRUE_LABELS), class_names=["dark", "bright"], pixels=pixels)


@pytest.mark.parametrize("batch_size", [3, 4, 10, 256])
def test_evaluate_returns_the_known_accuracy_over_every_batch(batch_size):
    encoder = BrightnessEncoder()
    accuracy = evaluate(encoder, ThresholdHead(), brightness_images(), batch_size=batch_size)
    assert accuracy == pytest.approx(0.7)
    assert sum(encoder.batch_sizes) == 10  # every image once, the last partial batch included
    assert encoder.batch_sizes[0] == min(batch_size, 10)


def test_evaluate_runs_in_eval_mode_and_restores_each_module_mode():
    encoder = BrightnessEncoder()
    encoder.train()
    encoder.norm.eval()  # a frozen BatchNorm inside a training encoder must stay frozen
    before = [m.training for m in encoder.modules()]
    assert before == [True, False, True]  # encoder, norm, drop
    evaluate(encoder, ThresholdHead(), brightness_images(), batch_size=4)
    assert all(not any(modes) for modes in encoder.modes_seen)
    assert [m.training for m in encoder.modules()] == before
    encoder.eval()
    evaluate(encoder, ThresholdHead(), brightness_images())
    assert not any(m.training for m in encoder.modules())


def test_evaluate_counts_each_wrong_prediction():
    images = brightness_images()
    images.labels = 1 - images.labels  # now right exactly where it was wrong: 3 of 10
    assert evaluate(BrightnessEncoder(), ThresholdHead(), images, batch_size=3) == pytest.approx(0.3)


class ModeRecordingHead(ThresholdHead):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.modes_seen: list[bool] = []

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        return super().forward(feats)


def test_evaluate_runs_the_head_in_eval_mode_too():
    head = ModeRecordingHead()
    head.train()
    assert evaluate(BrightnessEncoder(), head, brightness_images(), batch_size=4) == pytest.approx(0.7)
    assert head.modes_seen and not any(head.modes_seen)
    assert head.training  # and its mode restored afterwards


def test_without_stochastic_layers_a_train_mode_forward_equals_eval_mode():
    """Drop-connect (EfficientNet-Lite's 0.2) is off by default, so with frozen BatchNorm the encoder
    in training mode computes what its eval-mode targets were computed with; on, it does not."""
    from proxyfda.data import load_images
    from proxyfda.training import set_train_mode

    encoder = create_encoder("efficientnet-lite0", image_size=32)
    pixels = load_images("digits:test", n=16).batch(np.arange(16), 32)
    with torch.no_grad():
        target = encoder(pixels)
        set_train_mode(encoder, "frozen")
        torch.testing.assert_close(encoder(pixels), target, rtol=1e-4, atol=1e-5)
        set_train_mode(encoder, "frozen", stochastic_layers=True)
        torch.manual_seed(0)
        noisy = torch.nn.functional.cosine_similarity(encoder(pixels), target).min()
    assert noisy < 0.99  # drop-connect is back
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), target)  # and eval mode is deterministic again


@pytest.mark.parametrize("stochastic, expect_zero", [(False, True), (True, False)])
def test_first_ldifs_record_is_zero_before_any_update(tmp_path, stochastic, expect_zero):
    """The contract: before any update the fine-tuned features equal the cached pre-trained ones, so
    LDIFS's first record reads 0 up to float error; with stochastic layers on it reads the noise."""
    result = finetune(TINY_FINETUNE.replace(method="ldifs", steps=1, stochastic_layers=stochastic),
                      tmp_path / "run")
    first = next(r for r in Run.open(result.run_dir).records() if r["kind"] == "train")
    assert {"reg_loss", "reg_distance"} <= set(first)
    if expect_zero:
        assert first["reg_loss"] < 1e-4
    else:
        assert first["reg_loss"] > 1e-2


def _reference_setup(config: FinetuneConfig):
    """What the loop below starts from, built in `finetune`'s order (so the head's random start is the same):
    the encoder in train mode with frozen BatchNorm and no dropout, the images, their pre-trained features,
    the head, the regulariser, AdamW with weight decay on the encoder and head only, the generator's own Adam
    (lr 1e-3), and the method's sampler."""
    import random

    from proxyfda.data import load_images
    from proxyfda.features import extract_features
    from proxyfda.losses import build_regularizer
    from proxyfda.methods import get_method
    from proxyfda.sampling import ClassBalancedSampler, EpochSampler

    method = get_method(config.method)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    encoder = create_encoder(config.base_encoder, image_size=config.image_size, device="cpu")
    train = load_images(config.data)
    pre = torch.from_numpy(extract_features(encoder, train))
    head = torch.nn.Linear(encoder.feature_dim, len(train.class_names))
    options = {**method.options, **config.reg_options}
    if method.regularizer == "l2sp":
        options["reference_state"] = {name: value.clone() for name, value in encoder.state_dict().items()}
    regularizer = build_regularizer(method.regularizer, **options)
    generator = list(getattr(regularizer, "generator_parameters", list)())
    others = [p for p in regularizer.parameters() if all(p is not g for g in generator)]
    optimizers = [torch.optim.AdamW([{"params": [*encoder.parameters(), *head.parameters()]},
                                     {"params": others, "weight_decay": 0.0}],
                                    lr=config.lr, weight_decay=config.weight_decay)]
    optimizers += [torch.optim.Adam(generator, lr=1e-3)] if generator else []
    classes = min(config.classes_per_batch, len(train.class_names))
    sampler = (ClassBalancedSampler(train.labels, m=classes, n=config.batch_size // classes, features=pre.numpy(),
                                    seed=config.seed)
               if method.sampler == "balanced" else EpochSampler(len(train), config.batch_size, config.seed))
    encoder.train()
    encoder.set_stochastic(False)  # no dropout or drop-connect (stochastic_layers is off)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # bn_mode "frozen"
            module.eval()
    return encoder, train, pre, head, regularizer, optimizers, sampler


def _reference_finetune(config: FinetuneConfig) -> tuple[dict, dict, list[dict]]:
    """The fine-tuning loop written out as docs/METHOD.md and the method table describe it, for a method whose
    regulariser reads features (balanced batches) or the encoder itself (shuffled epochs): CE + the regulariser
    (+ a proxy generator's own loss, stepped by its own optimiser), linear warm-up then cosine to zero.
    Returns the encoder's and head's final weights and each step's (loss, task, lr)."""
    import math

    import torch.nn.functional as F

    config = resolve_config(config)
    encoder, train, pre, head, regularizer, optimizers, sampler = _reference_setup(config)
    logged = []
    for step in range(config.steps):
        if step < config.warmup_steps:
            lr = config.lr * (step + 1) / config.warmup_steps
        else:
            done = (step - config.warmup_steps) / (config.steps - config.warmup_steps)
            lr = config.lr * (1 + math.cos(math.pi * done)) / 2
        for group in optimizers[0].param_groups:
            group["lr"] = lr
        rows = sampler.next_batch()
        feats = encoder(train.batch(rows, config.image_size))
        task = F.cross_entropy(head(feats), torch.from_numpy(train.labels[rows]))
        inputs = (encoder,) if config.method == "l2sp" else (feats, pre[rows])
        terms = regularizer(*inputs, return_terms=True)
        loss = task + terms["loss"] + terms.get("generator", 0.0)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        logged.append({"loss": loss.item(), "task": task.item(), "lr": lr})
    return encoder.state_dict(), head.state_dict(), logged


@pytest.mark.parametrize("method, options", [("fda", {"k": 3}), ("proxy-fda", {"k": 3}), ("l2sp", {"alpha": 50.0})])
def test_the_loop_trains_as_a_loop_written_out_by_hand(tmp_path, method, options):
    """Three steps of `finetune` against the written-out loop above: every logged loss, task loss and rate, and
    the final weights of the encoder and the head. A step that dropped a term, decayed τ and b, skipped the
    generator's optimiser or applied the rate of the wrong step would land elsewhere. Both run the same
    operations in the same order in one process, so they agree exactly."""
    config = TINY_FINETUNE.replace(method=method, steps=3, eval_every=3, warmup_steps=2, batch_size=20, eval_size=20,
                                   classes_per_batch=5, weight_decay=0.05, reg_options=options)
    assert finetune(config, tmp_path / "run").status == "completed"
    encoder_state, head_state, expected = _reference_finetune(config)
    history = Run.open(tmp_path / "run").records()
    logged = [{name: r[name] for name in ("loss", "task", "lr")} for r in history if r["kind"] == "train"]
    assert [r["lr"] for r in expected] == pytest.approx([1.5e-3, 3e-3, 3e-3])
    assert logged == expected
    terms = {"fda": {"reg_fda", "reg_loss_pos"}, "proxy-fda": {"reg_generator", "reg_manifold", "reg_variance"},
             "l2sp": {"reg_loss"}}[method]
    assert terms <= set(next(r for r in history if r["kind"] == "train"))  # each regulariser's terms logged
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for name, value in head_state.items():
        torch.testing.assert_close(checkpoint["head"][name], value, rtol=0, atol=0)
    for name, value in encoder_state.items():
        torch.testing.assert_close(checkpoint["encoder"][name], value, rtol=0, atol=0)


def test_probe_scores_are_the_kept_neighbours_cknna_and_cka_of_the_probe_set():
    """What every evaluation logs, against brute force: mean overlap@10 of cosine kNN sets, and linear CKA from
    its formula on centred features (CKNNA has its own reference tests; here it must be the report's)."""
    from proxyfda.data import ImageSet
    from proxyfda.metrics import cknna
    from proxyfda.training import PROBE_K, probe_scores

    rng = np.random.default_rng(3)
    pre = rng.normal(size=(40, 6))
    now = pre + 0.8 * rng.normal(size=pre.shape)
    images = ImageSet(spec="rows:40", labels=np.arange(40) % 4, class_names=list("abcd"))

    def neighbours(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :PROBE_K]

    before, after = neighbours(pre), neighbours(now)
    overlap = np.mean([len(set(b) & set(a)) / PROBE_K for b, a in zip(before, after)])
    xc, yc = pre - pre.mean(0), now - now.mean(0)
    cka = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    scores = probe_scores(pre, now, images)
    assert set(scores) == {"probe_overlap", "probe_cknna", "probe_cka"}
    assert scores["probe_overlap"] == pytest.approx(overlap, abs=1e-12)
    assert scores["probe_cka"] == pytest.approx(cka, rel=1e-9)
    assert scores["probe_cknna"] == pytest.approx(cknna(pre, now, PROBE_K), rel=1e-9)
    assert probe_scores(pre[:6], now[:6], images.subset(np.arange(6)))["probe_overlap"] == 1.0  # k is capped at N − 1


def test_a_checkpoint_keeps_a_regularisers_state_only_when_it_has_one():
    from proxyfda.losses import build_regularizer
    from proxyfda.training import checkpoint_state

    encoder, head = torch.nn.Linear(2, 3), torch.nn.Linear(3, 2)
    plain = checkpoint_state(encoder, head, 7)
    assert set(plain) == {"encoder", "head", "step"} and plain["step"] == 7
    assert plain["encoder"].keys() == encoder.state_dict().keys()
    assert set(checkpoint_state(encoder, head, 7, build_regularizer("ldifs-final"))) == {"encoder", "head", "step"}
    learnable = build_regularizer("fda", learn_tau=True)
    assert checkpoint_state(encoder, head, 7, learnable)["regularizer"].keys() == learnable.state_dict().keys()


def test_only_scalar_terms_are_logged_and_every_float_buffer_must_be_finite():
    from proxyfda.training import _scalar_terms, finite_weights

    terms = {"loss": torch.tensor(1.5), "anchor_loss": torch.tensor([1.0, 2.0]), "count": 3}
    assert _scalar_terms(terms) == {"reg_loss": 1.5}
    norm = torch.nn.BatchNorm1d(2)
    assert finite_weights(norm)  # its integer counter is not a weight
    norm.running_var[0] = float("inf")
    assert not finite_weights(torch.nn.Linear(2, 2), norm)


def test_a_safe_run_fits_with_the_runs_own_training_options(tmp_path, monkeypatch):
    """SAFE's fit receives the run's steps, rate, batch, decay and seed (each a distinct value here) with its own
    options from reg_options, the stop event and a progress hook; the run logs its training records (without their
    stage), then one evaluation with the chosen β, and finishes with the fit's status."""
    import threading
    from types import SimpleNamespace

    from proxyfda import safe, safe_encoder, training, zeroshot
    from proxyfda.data import load_images

    seen, logged, stop = {}, [], threading.Event()

    def fit_safe(encoder, fit, val, config, progress=None, stop=None):
        seen.update(config=config, fit=len(fit), val=len(val), stop=stop, fit_pixels=fit.pixels)
        progress({"stage": "train", "step": 1, "loss": 2.0})
        progress({"stage": "beta", "beta": 0.5})
        return SimpleNamespace(status="completed", steps_done=7, beta=0.5, val_accuracy={0.5: 0.75})

    monkeypatch.setattr(training, "create_encoder", lambda spec, **options: object())
    monkeypatch.setattr(safe, "fit_safe", fit_safe)
    monkeypatch.setattr(safe_encoder, "save_safe", lambda result, path: path.write_bytes(b"safe"))
    monkeypatch.setattr(safe_encoder, "apply_safe", lambda encoder, result: encoder)
    monkeypatch.setattr(zeroshot, "text_classifier", lambda encoder, names, templates: seen.update(templates=templates))
    monkeypatch.setattr(zeroshot, "zero_shot_accuracy", lambda encoder, images, classifier: seen.update(
        test=images.labels.tolist()) or 0.625)
    config = FinetuneConfig(method="safe", base_encoder="open_clip:RN50", data="digits:train", eval_data="digits:test",
                            steps=7, lr=3e-4, batch_size=12, weight_decay=0.02, seed=5, eval_size=30,
                            reg_options={"val_fraction": 0.25, "label_smoothing": 0.05, "templates": ["a {}"]})
    result = finetune(config, tmp_path / "safe", callback=logged.append, stop=stop)
    fitted = seen["config"]
    assert (fitted.steps, fitted.lr, fitted.batch_size, fitted.weight_decay, fitted.seed) == (7, 3e-4, 12, 0.02, 5)
    assert (fitted.val_fraction, fitted.label_smoothing, seen["templates"]) == (0.25, 0.05, ("a {}",))
    assert seen["val"] == pytest.approx(0.25 * (seen["fit"] + seen["val"]), abs=10) and seen["stop"] is stop
    assert seen["test"] == load_images("digits:test", n=30, seed=5).labels.tolist()  # the run's own test draw
    assert logged == [{"kind": "train", "step": 1, "loss": 2.0},
                      {"kind": "eval", "step": 7, "accuracy": 0.625, "beta": 0.5, "val_accuracy": 0.75}]
    assert (result.status, result.steps_done, result.final_eval_accuracy) == ("completed", 7, 0.625)
    assert (tmp_path / "safe" / "safe.pt").read_bytes() == b"safe"
    training_images = load_images("digits:train")  # β's share drawn with the run's seed
    kept = training.stratified_split(training_images.labels, 0.75, 5)[0]
    np.testing.assert_array_equal(seen["fit_pixels"], training_images.pixels[kept])
    with pytest.raises(ProxyFDAError, match="overwrite"):
        finetune(config, tmp_path / "safe")
    assert finetune(config, tmp_path / "safe", overwrite=True).status == "completed"  # replaced when asked
