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
from proxyfda.training import finetune, lr_at

from conftest import TINY_FINETUNE


def test_run_directory_contents(tiny_run):
    config = FinetuneConfig.load(tiny_run / "config.json")
    assert config == resolve_config(TINY_FINETUNE)  # saved with every method default filled in
    assert config.weight_decay == 0.01 and config.sampler == "epoch"
    records = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
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
