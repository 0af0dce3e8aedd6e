"""Every fine-tuning method end to end on tiny real data, WiSE-FT runs, LP-FT's probe head, and the
forgetting report over runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from proxyfda.data import load_images
from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.features import extract_features
from proxyfda.forgetting import forgetting_report
from proxyfda.interpolation import wise_run
from proxyfda.methods import METHODS
from proxyfda.training import finetune, linear_probe_head

from conftest import TINY_FINETUNE
from test_zeroshot import tiny_clip_spec

#: 20 = 10 digit classes × 2 images: the balanced sampler's batches for fda / proxy-fda
TINY = TINY_FINETUNE.replace(steps=2, eval_every=2, batch_size=20, classes_per_batch=10)


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


# lp-ft (its probe on every training feature) and l2sp took 106 s and 27 s on two shared cores
# FDA, Proxy-FDA and L2-SP also run in test_training.py's loop written out by hand (every figure, exactly)
@pytest.mark.parametrize("method", ["naive", pytest.param("l2sp", marks=pytest.mark.slow), "ldifs", "ldifs-final",
                                    pytest.param("lp-ft", marks=pytest.mark.slow)])
def test_each_method_runs_and_saves_a_loadable_encoder(method, tmp_path):
    result = finetune(TINY.replace(method=method), tmp_path / method)
    assert result.status == "completed" and result.steps_done == 2
    train = [r for r in history(tmp_path / method) if r["kind"] == "train"]
    if method in ("l2sp", "ldifs", "ldifs-final"):
        assert "reg_loss" in train[0] and np.isfinite(train[0]["reg_loss"])
    if method == "l2sp":  # θ = θ0 before the first update
        assert train[0]["reg_loss"] == 0.0 and train[1]["reg_loss"] > 0.0
    fine = create_encoder(f"run:{tmp_path / method}")
    assert fine.weights_hash() != create_encoder("efficientnet-lite0", image_size=32).weights_hash()


def test_regulariser_options_reach_the_module_and_bad_ones_fail(tmp_path):
    with pytest.raises(ProxyFDAError, match="no regulariser"):
        finetune(TINY.replace(reg_options={"alpha": 1.0}), tmp_path / "naive")
    with pytest.raises(ProxyFDAError):
        finetune(TINY.replace(method="fda", reg_options={"no_such_option": 1}), tmp_path / "fda")
    result = finetune(TINY.replace(method="l2sp", reg_options={"alpha": 0.0}), tmp_path / "l2sp0")
    assert all(r.get("reg_loss", 0.0) == 0.0 for r in history(result.run_dir))
    assert sorted(METHODS) == sorted(["naive", "l2sp", "ldifs", "ldifs-final", "lp-ft", "fda", "proxy-fda", "safe"])


def test_lp_ft_head_is_the_probe_of_the_documented_strength():
    """LP-FT's head is sklearn's logistic regression at C = 1 (docs/METHOD.md) laid into a linear layer: its
    logits are the probe's decision function for the classes it saw; absent classes never win."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(90, 6)) + np.repeat(np.eye(3, 6) * 1.5, 30, axis=0)
    labels = np.repeat(np.array([0, 2, 4]), 30)  # classes 1 and 3 are absent
    head = linear_probe_head(features, labels, n_classes=5)
    probe = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(features, labels)
    with torch.no_grad():
        logits = head(torch.from_numpy(features).float()).numpy()
    np.testing.assert_allclose(logits[:, [0, 2, 4]], probe.decision_function(features), atol=0.02)
    assert (logits[:, [1, 3]] < -1e3).all()
    # two classes: sklearn keeps one row (the second class's logit); the head gives the first class logit 0
    binary = linear_probe_head(features[:60], labels[:60], n_classes=3)
    probe = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(features[:60], labels[:60])
    with torch.no_grad():
        logits = binary(torch.from_numpy(features[:60]).float()).numpy()
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0], probe.decision_function(features[:60]), atol=0.02)
    assert np.abs(logits[:, 0]).max() == 0.0 and (logits[:, 1] < -1e3).all()


def test_wise_ft_runs_interpolate_for_real(tiny_run, tmp_path):
    base = create_encoder("efficientnet-lite0", image_size=32)
    fine = create_encoder(f"run:{tiny_run}")
    at0 = create_encoder(f"run:{wise_run(tiny_run, 0.0, tmp_path / 'w0')}")
    at1 = create_encoder(f"run:{wise_run(tiny_run, 1.0, tmp_path / 'w1')}")
    half = create_encoder(f"run:{wise_run(tiny_run, 0.5, tmp_path / 'w5')}")
    assert at0.weights_hash() == base.weights_hash() and at1.weights_hash() == fine.weights_hash()
    key = "backbone._conv_head.weight"
    expected = 0.5 * (base.state_dict()[key] + fine.state_dict()[key])
    torch.testing.assert_close(half.state_dict()[key], expected)
    assert json.loads((tmp_path / "w5" / "wise.json").read_text())["alpha"] == 0.5


def test_safe_method_through_the_engine(tmp_path):
    spec = tiny_clip_spec(tmp_path, "rn")
    config = TINY.replace(method="safe", base_encoder=spec, steps=3, batch_size=8, eval_size=30)
    result = finetune(config, tmp_path / "safe")
    assert result.status == "completed" and result.steps_done == 3
    encoder = create_encoder(f"run:{tmp_path / 'safe'}")
    base = create_encoder(spec)
    outside = {k: v for k, v in encoder.state_dict().items() if "attnpool" not in k and "head" not in k}
    assert outside and encoder.weights_hash() != base.weights_hash()
    images = load_images("digits:test", n=8)
    assert extract_features(encoder, images, use_cache=False).shape == (8, base.feature_dim)
    with pytest.raises(ProxyFDAError, match="open_clip ResNet"):
        finetune(TINY.replace(method="safe"), tmp_path / "safe-on-efficientnet")
    # a CLIP run is also measured zero-shot with its text tower
    report = forgetting_report([tmp_path / "safe"], held_out={"digits:test": 40})
    zero_shot = report["runs"]["safe"]["zero_shot"]["digits:test"]
    assert 0.0 <= zero_shot["pretrained"] <= 1.0 and 0.0 <= zero_shot["finetuned"] <= 1.0
    assert zero_shot["delta"] == pytest.approx(zero_shot["finetuned"] - zero_shot["pretrained"])


def test_safe_chooses_beta_on_training_images_and_reports_unseen_accuracy(tmp_path, monkeypatch):
    """β is picked on a held-out share of the training data; the run's accuracy is measured on its eval
    data, which neither the fit nor the choice of β saw."""
    import proxyfda.safe
    from proxyfda.zeroshot import text_classifier, zero_shot_accuracy

    seen = {}
    real_fit = proxyfda.safe.fit_safe

    def spy(encoder, train, val, config, **kwargs):
        seen.update(train=train, val=val, config=config)
        return real_fit(encoder, train, val, config, **kwargs)

    monkeypatch.setattr(proxyfda.safe, "fit_safe", spy)
    spec = tiny_clip_spec(tmp_path, "rn")
    config = TINY.replace(method="safe", base_encoder=spec, steps=3, batch_size=8, eval_size=30,
                          reg_options={"val_fraction": 0.25})
    result = finetune(config, tmp_path / "safe")
    training = load_images("digits:train")
    train, val = seen["train"], seen["val"]
    assert len(train) + len(val) == len(training) and abs(len(val) - len(training) / 4) <= 10  # one split
    assert train.spec == val.spec == "digits:train" and seen["config"].val_fraction == 0.25
    assert not {row.tobytes() for row in val.pixels} <= {row.tobytes() for row in train.pixels}  # disjoint rows
    assert (seen["config"].steps, seen["config"].lr) == (3, 3e-3)  # what the config set; SAFE's own otherwise
    encoder = create_encoder(f"run:{tmp_path / 'safe'}")
    test = load_images("digits:test", n=30, seed=0)
    expected = zero_shot_accuracy(encoder, test, text_classifier(encoder, test.class_names), use_cache=False)
    assert result.final_eval_accuracy == pytest.approx(expected)
    final = [r for r in history(tmp_path / "safe") if r["kind"] == "eval"][-1]
    assert final["accuracy"] == pytest.approx(expected) and 0.0 <= final["val_accuracy"] <= 1.0


@pytest.mark.slow  # 127 s: real probes and OTDD over two runs
def test_forgetting_report_over_runs(tiny_run, tmp_path):
    wise = wise_run(tiny_run, 0.0, tmp_path / "wise0")  # the pre-trained weights: nothing forgotten
    held_out = {"fashion-mnist:test": 120}
    report = forgetting_report([tiny_run, wise], held_out=held_out)
    run, same = report["runs"][tiny_run.name], report["runs"]["wise0"]
    assert 0.0 <= run["A_LP"] <= 1.0 and set(run["delta_LP"]) == {"fashion-mnist:test", "mean"}
    assert same["delta_LP"]["mean"] == 0.0 and same["l2"]["mean"] == 0.0
    assert same["otdd"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert run["l2"]["mean"] > 0.0 and run["otdd"]["mean"] > 0.0
    assert report["held_out"] == ["fashion-mnist:test"]
    assert report["correlation_with_delta_LP"] == {"otdd": None, "l2": None}  # needs three runs
