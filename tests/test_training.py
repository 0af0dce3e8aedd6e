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
