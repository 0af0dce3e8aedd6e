"""The command line on small real data: drift writes its files, bad input exits with a message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from proxyfda.cli import main


def test_drift_writes_metrics_and_points(tiny_run, tmp_path, capsys):
    out = tmp_path / "drift"
    code = main(["drift", "--pretrained", "efficientnet-lite0", "--finetuned", f"run:{tiny_run}",
                 "--data", "digits:test", "--n", "100", "--k", "5", "--image-size", "32", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 100 and metrics["k"] == 5
    assert metrics["overlap_at_k_random_baseline"] == 5 / 99
    assert 0.0 <= metrics["overlap_at_k_mean"] <= 1.0 and "trustworthiness" in metrics
    points = pd.read_parquet(out / "points.parquet")
    assert len(points) == 100
    assert {"id", "class", "overlap_at_k", "jaccard", "l2_drift", "neighbours_pretrained",
            "neighbours_finetuned"} <= set(points.columns)
    assert np.isclose(points["overlap_at_k"].mean(), metrics["overlap_at_k_mean"])
    assert all(len(row) == 5 and i not in row for i, row in zip(points["id"], points["neighbours_pretrained"]))
    assert json.loads((out / "config.json").read_text())["finetuned"] == f"run:{tiny_run}"


def test_drift_compare_writes_the_three_way_files(tiny_run, tmp_path):
    out = tmp_path / "drift"
    code = main(["drift", "--finetuned", f"run:{tiny_run}", "--compare", "efficientnet-lite0", "--data", "digits:test",
                 "--n", "60", "--k", "5", "--image-size", "32", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "three_way.json").read_text())
    assert summary["overlap efficientnet-lite0"] == 1.0  # the base itself keeps every neighbourhood
    frame = pd.read_parquet(out / "three_way.parquet")
    assert len(frame) == 60 and (frame["kept by efficientnet-lite0 only"] >= 0).all()
    assert np.isclose(frame["overlap tiny"].mean(), json.loads((out / "metrics.json").read_text())["overlap_at_k_mean"])
    assert json.loads((out / "compare" / "metrics.json").read_text())["overlap_at_k_mean"] == 1.0


def test_embed_writes_features(tmp_path):
    out = tmp_path / "feats.npy"
    assert main(["embed", "--encoder", "efficientnet-lite0", "--data", "digits", "--n", "12",
                 "--image-size", "32", "--out", str(out)]) == 0
    assert np.load(out).shape == (12, 1280)
    assert np.load(tmp_path / "feats.labels.npy").shape == (12,)


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    code = main(["drift", "--finetuned", "efficientnet-lite0", "--data", "digits", "--n", "6", "--k", "8",
                 "--image-size", "32", "--out", str(tmp_path)])
    assert code == 2
    assert "k must be smaller" in capsys.readouterr().err
    assert main(["embed", "--encoder", "nope", "--data", "digits", "--out", str(tmp_path / "x.npy")]) == 2
