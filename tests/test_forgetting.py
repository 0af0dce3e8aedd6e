"""Forgetting measures: the probe chooses C on validation data; OTDD sees labels, L2 does not."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from proxyfda.errors import ProxyFDAError
from proxyfda.forgetting import feature_l2, linear_probe, otdd, probe_accuracy, stratified_split


def blobs(n_per_class=60, d=8, separation=4.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=separation, size=(3, d))
    labels = np.repeat(np.arange(3), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), d)), labels


def test_stratified_split_keeps_class_shares():
    labels = np.repeat(np.arange(3), [30, 60, 90])
    first, second = stratified_split(labels, 2 / 3, seed=1)
    assert len(np.intersect1d(first, second)) == 0 and len(first) + len(second) == 180
    assert np.bincount(labels[first]).tolist() == [20, 40, 60]
    first, _ = stratified_split(np.zeros(10, int), 0.77)  # 7.7 rounds to 8, not down to 7
    assert len(first) == 8


def test_probe_separable_vs_random_labels():
    x, y = blobs()
    assert probe_accuracy(x, y).accuracy > 0.95
    shuffled = np.random.default_rng(0).permutation(y)
    assert probe_accuracy(x, shuffled).accuracy < 0.6
    result = linear_probe(x[::2], y[::2], x[1::2], y[1::2], Cs=(0.01, 1.0))
    assert set(result.val_accuracy) == {0.01, 1.0} and result.C in (0.01, 1.0)
    with pytest.raises(ProxyFDAError, match="two classes"):
        linear_probe(x, np.zeros(len(x), int), x, y)


def test_the_probe_picks_c_on_the_split_then_refits_on_every_training_row():
    """Each C's validation accuracy is a fit on 75 % scored on the rest; the chosen C is refitted on all the
    training rows (sklearn directly, unit rows); ties go to the stronger regularisation (the smaller C)."""
    from sklearn.linear_model import LogisticRegression

    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    x = rng.normal(size=(3, 6))[y] + 1.2 * rng.normal(size=(150, 6))
    x_train, y_train, x_test, y_test = x[:90], y[:90], x[90:], y[90:]
    result = linear_probe(x_train, y_train, x_test, y_test, Cs=(0.5,))
    fit, val = stratified_split(y_train, 0.75, 0)
    on_split = LogisticRegression(C=0.5, max_iter=2000).fit(unit(x_train)[fit], y_train[fit])
    assert result.val_accuracy == {0.5: on_split.score(unit(x_train)[val], y_train[val])}
    whole = LogisticRegression(C=0.5, max_iter=2000).fit(unit(x_train), y_train)
    assert result.accuracy == whole.score(unit(x_test), y_test) != on_split.score(unit(x_test), y_test)
    x_sep, y_sep = blobs()
    separable = linear_probe(x_sep, y_sep, x_sep, y_sep, Cs=(100.0, 0.01, 1.0))
    assert set(separable.val_accuracy.values()) == {1.0} and separable.C == 0.01


def test_otdd_is_zero_for_identical_sets_and_label_aware():
    x, y = blobs(n_per_class=30)
    assert otdd(x, y, x, y) == pytest.approx(0.0, abs=1e-3)  # sqrt of float round-off
    # relabelling a third of the points moves no point, so label-blind OT and L2 see nothing...
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flip = rng.choice(len(y), len(y) // 3, replace=False)
    noisy[flip] = (y[flip] + 1) % 3
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    plain = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(x), 1 / len(x)), ot.dist(unit, unit))
    assert plain == pytest.approx(0.0, abs=1e-9) and feature_l2(x, x) == 0.0
    # ...but the label-aware distance does; renaming classes, which changes nothing real, does not
    assert otdd(x, y, x, noisy) > 0.1
    assert otdd(x, y, x, (y + 1) % 3) == pytest.approx(0.0, abs=1e-3)


def test_otdd_draws_the_same_sample_from_both_sides_of_a_pair():
    """Past max_points (and max_per_class) the two sets are subsampled; the features of the same images must
    keep their pairs, or a set is at the distance between two random halves of itself (0.6 on real data)."""
    x, y = blobs(n_per_class=400, d=16)
    assert otdd(x, y, x, y, max_points=300) == pytest.approx(0.0, abs=1e-3)
    assert otdd(x, y, x, y, max_points=2000, max_per_class=20) == pytest.approx(0.0, abs=1e-3)
    assert otdd(x, y, x[::-1], y[::-1], max_points=300) > 0.1  # the same set, rows unpaired: a sampling distance


def test_otdd_grows_with_a_shift():
    x, y = blobs(n_per_class=30)
    rng = np.random.default_rng(1)
    small = otdd(x, y, x + 0.1 * rng.normal(size=x.shape), y)
    large = otdd(x, y, x + 1.0 * rng.normal(size=x.shape), y)
    assert 0 < small < large


# ---- forgetting_report over runs whose features, probe accuracies and OTDD are fixed by the test -------------
#
# Encoders, image sets, feature extraction, the probe and OTDD are stubbed, so ΔLP per set, its mean and the
# correlations across runs are known numbers. Features are unit rows at a known angle to the pre-trained ones
# (all pre-trained rows are e0), so the real feature_l2 = 2 − 2 cos θ is known too.

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from scipy.stats import pearsonr, spearmanr  # noqa: E402

from proxyfda.config import FinetuneConfig  # noqa: E402
from proxyfda.live import runs_table  # noqa: E402  (imported before the stubs: it binds the real encoders)
from proxyfda.runs import Run  # noqa: E402
from proxyfda.forgetting import ProbeResult, forgetting_report  # noqa: E402

STUB_SETS = {"setA:test": 6, "setB:all": 6}
PRE_ACC = {"setA:test": 0.80, "setB:all": 0.60, "task:test": 0.90}
#: per run: method, probe accuracy per set (and on the task), cos θ per set, OTDD per set
STUB_RUNS = {
    "r1": dict(method="naive", acc={"setA:test": 0.70, "setB:all": 0.50, "task:test": 0.99},
               cos={"setA:test": 0.5, "setB:all": 0.0, "task:test": 0.3}, otdd={"setA:test": 1.2, "setB:all": 1.6}),
    "r2": dict(method="fda", acc={"setA:test": 0.78, "setB:all": 0.62, "task:test": 0.97},
               cos={"setA:test": 0.9, "setB:all": 0.8, "task:test": 0.7}, otdd={"setA:test": 0.5, "setB:all": 0.7}),
    "r3": dict(method="l2sp", acc={"setA:test": 0.80, "setB:all": 0.57, "task:test": 0.95},
               cos={"setA:test": 0.6, "setB:all": 1.0, "task:test": 0.9}, otdd={"setA:test": 0.9, "setB:all": 0.5}),
}
#: what the report must say, worked out by hand
DELTA = {"r1": {"setA:test": -0.10, "setB:all": -0.10, "mean": -0.10},
         "r2": {"setA:test": -0.02, "setB:all": 0.02, "mean": 0.0},
         "r3": {"setA:test": 0.00, "setB:all": -0.03, "mean": -0.015}}
L2 = {"r1": {"setA:test": 1.0, "setB:all": 2.0, "mean": 1.5},
      "r2": {"setA:test": 0.2, "setB:all": 0.4, "mean": 0.3},
      "r3": {"setA:test": 0.8, "setB:all": 0.0, "mean": 0.4}}
OTDD = {"r1": {"setA:test": 1.2, "setB:all": 1.6, "mean": 1.4},
        "r2": {"setA:test": 0.5, "setB:all": 0.7, "mean": 0.6},
        "r3": {"setA:test": 0.9, "setB:all": 0.5, "mean": 0.7}}


@pytest.fixture
def stub_world(monkeypatch, tmp_path):
    """Run directories r1..r3 plus stubs; returns (run dirs, calls made to create_encoder)."""
    import proxyfda.data
    import proxyfda.encoders
    import proxyfda.features
    import proxyfda.forgetting as forgetting

    owner: dict[int, tuple[str, str]] = {}  # id(features) -> (encoder name, data spec)
    keep: list[np.ndarray] = []
    encoder_calls: list[tuple[str, int | None]] = []

    def create_encoder(spec, image_size=None, device=None):
        encoder_calls.append((spec, image_size))
        if spec.startswith("run:"):
            return SimpleNamespace(name=spec.rsplit("/", 1)[-1], image_size=32)
        return SimpleNamespace(name="pre", image_size=image_size)

    def load_images(spec, n=None, seed=0):
        return SimpleNamespace(spec=spec, labels=np.arange(n or 6) % 2)

    def extract_features(encoder, data, **_):
        n = len(data.labels)
        if encoder.name == "pre":
            feats = np.tile([1.0, 0.0], (n, 1))
        else:
            c = STUB_RUNS[encoder.name]["cos"][data.spec]
            feats = np.tile([c, np.sqrt(1 - c * c)], (n, 1))
        owner[id(feats)] = (encoder.name, data.spec)
        keep.append(feats)
        return feats

    def probe_accuracy(features, labels, seed=0, **_):
        name, spec = owner[id(features)]
        return ProbeResult(PRE_ACC[spec] if name == "pre" else STUB_RUNS[name]["acc"][spec], 1.0)

    def otdd(x_a, labels_a, x_b, labels_b, seed=0, **_):
        pre, spec = owner[id(x_a)]
        name, spec_b = owner[id(x_b)]
        assert pre == "pre" and spec == spec_b
        return STUB_RUNS[name]["otdd"][spec]

    monkeypatch.setattr(proxyfda.encoders, "create_encoder", create_encoder)
    monkeypatch.setattr(proxyfda.data, "load_images", load_images)
    monkeypatch.setattr(proxyfda.features, "extract_features", extract_features)
    monkeypatch.setattr(forgetting, "probe_accuracy", probe_accuracy)
    monkeypatch.setattr(forgetting, "otdd", otdd)
    monkeypatch.setattr(forgetting, "HELD_OUT_SETS", {**STUB_SETS, "task:test": 6})
    dirs = []
    for name, run in STUB_RUNS.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        FinetuneConfig(method=run["method"], data="task:train", eval_data="task:test",
                       base_encoder="base").save(run_dir / "config.json")
        dirs.append(run_dir)
    return dirs, encoder_calls


def test_forgetting_report_delta_lp_per_set_and_mean(stub_world):
    dirs, _ = stub_world
    report = forgetting_report(dirs, held_out=STUB_SETS)
    assert list(report["runs"]) == ["r1", "r2", "r3"]
    assert report["held_out"] == ["setA:test", "setB:all"]
    for name, run in report["runs"].items():
        assert run["method"] == STUB_RUNS[name]["method"]
        assert run["A_LP"] == STUB_RUNS[name]["acc"]["task:test"]
        assert run["A_LP_pretrained"] == 0.90
        for key, expected in (("delta_LP", DELTA), ("l2", L2), ("otdd", OTDD)):
            assert set(run[key]) == set(expected[name]), key
            for spec, value in expected[name].items():
                assert run[key][spec] == pytest.approx(value, abs=1e-6), (name, key, spec)  # L2 runs in float32


def test_forgetting_report_correlations_match_scipy_on_the_known_numbers(stub_world):
    dirs, _ = stub_world
    report = forgetting_report(dirs, held_out=STUB_SETS)
    deltas = [DELTA[r]["mean"] for r in ("r1", "r2", "r3")]
    for key, table in (("otdd", OTDD), ("l2", L2)):
        distances = [table[r]["mean"] for r in ("r1", "r2", "r3")]
        got = report["correlation_with_delta_LP"][key]
        assert got["n_runs"] == 3
        assert got["pearson"] == pytest.approx(pearsonr(distances, deltas)[0], abs=1e-9)
        assert got["spearman"] == pytest.approx(spearmanr(distances, deltas)[0], abs=1e-9)
    # by hand: ranks of ΔLP (1, 3, 2) against OTDD (3, 1, 2) and L2 (3, 1, 2)
    assert report["correlation_with_delta_LP"]["otdd"]["spearman"] == pytest.approx(-1.0)


def test_forgetting_report_builds_the_pretrained_encoder_at_the_runs_resolution(stub_world):
    dirs, calls = stub_world
    forgetting_report(dirs, held_out=STUB_SETS)
    assert [c for c in calls if not c[0].startswith("run:")] == [("base", 32)]  # once, shared by every run
    assert [c[0] for c in calls if c[0].startswith("run:")] == [f"run:{d}" for d in dirs]


def test_forgetting_report_defaults_to_every_held_out_set_but_the_task(stub_world):
    dirs, _ = stub_world
    report = forgetting_report(dirs[:1])
    assert report["held_out"] == ["setA:test", "setB:all"]
    assert report["runs"]["r1"]["delta_LP"]["mean"] == pytest.approx(-0.10)
    assert report["correlation_with_delta_LP"] == {"otdd": None, "l2": None}


def test_forgetting_report_keeps_runs_with_the_same_name_in_different_folders(stub_world, tmp_path):
    import shutil

    dirs, _ = stub_world
    twins = []
    for parent in ("a", "b"):
        (tmp_path / parent).mkdir()
        twins.append(Path(shutil.copytree(dirs[0], tmp_path / parent / "r1")))
    try:
        report = forgetting_report(twins, held_out=STUB_SETS)
    except ProxyFDAError:
        return  # refusing ambiguous names is fine too
    assert len(report["runs"]) == 2


def test_forgetting_cli_lists_same_named_runs_apart(stub_world, tmp_path, capsys):
    import json
    import shutil

    from proxyfda.cli import main

    dirs, _ = stub_world
    twins = [shutil.copytree(dirs[0], tmp_path / parent / "r1") for parent in ("a", "b")]
    assert main(["forgetting", "--runs", *map(str, twins), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "a/r1" in printed and "b/r1" in printed
    assert set(json.loads((tmp_path / "report" / "report.json").read_text())["runs"]) == {"a/r1", "b/r1"}


def test_each_run_keeps_its_measurement_and_the_runs_table_shows_it(stub_world):
    dirs, _ = stub_world
    assert Run.open(dirs[0]).forgetting() is None
    forgetting_report(dirs, held_out=STUB_SETS)
    kept = Run.open(dirs[1]).forgetting()
    assert kept["delta_LP"]["mean"] == pytest.approx(DELTA["r2"]["mean"])
    assert kept["held_out_sizes"] == STUB_SETS and kept["seed"] == 0
    table = runs_table([Run.open(d) for d in dirs]).set_index("run")
    for name in ("r1", "r2", "r3"):
        assert table.loc[name, "mean ΔLP"] == pytest.approx(DELTA[name]["mean"])
        assert table.loc[name, "OT distance"] == pytest.approx(OTDD[name]["mean"])
        assert table.loc[name, "L2 distance"] == pytest.approx(L2[name]["mean"], abs=1e-6)


def test_frontier_averages_seeds_per_strength_and_sorts_by_accuracy():
    from proxyfda.forgetting import frontier

    rows = [{"label": "m", "strength": s, "seed": seed, "A_LP": acc, "delta_LP": {"mean": d}}
            for s, seed, acc, d in ((1.0, 0, 0.90, -0.01), (1.0, 1, 0.92, -0.03), (0.1, 0, 0.96, -0.05),
                                    (0.1, 1, 0.98, -0.07))] + [{"label": "other", "strength": None, "seed": 0,
                                                                 "A_LP": 0.5, "delta_LP": {"mean": 0.0}}]
    acc, delta = frontier(rows, "m")
    np.testing.assert_allclose(acc, [91.0, 97.0])
    np.testing.assert_allclose(delta, [-2.0, -6.0])
    acc, delta = frontier(rows, "m", seed=1)
    np.testing.assert_allclose(acc, [92.0, 98.0])
