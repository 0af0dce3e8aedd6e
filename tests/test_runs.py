"""The run directory's owner (proxyfda.runs), the method table (proxyfda.methods) and the one spec
resolver: a run reads back as an object, methods keep their own defaults, every spec resolves the
same way from every entry point."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from proxyfda import runs
from proxyfda.cli import main
from proxyfda.config import DriftConfig, FinetuneConfig
from proxyfda.encoders import canonical_spec, create_encoder, spec_fingerprint
from proxyfda.data import load_images
from proxyfda.errors import ProxyFDAError
from proxyfda.interpolation import wise_run
from proxyfda.methods import METHODS, SAFE_OPTIONS, get_method, resolve_config
from proxyfda.losses import list_regularizers
from proxyfda.runs import Run, RunWriter, list_runs

from conftest import TINY_FINETUNE


def test_a_run_reads_back_as_an_object(tiny_run):
    run = Run.open(tiny_run)
    assert run.config == resolve_config(TINY_FINETUNE) and run.method == "naive"
    assert run.status == "completed" and run.summary()["steps_done"] == 4
    history = run.history()
    assert list(history.loc[history["kind"] == "train", "step"]) == [1, 2, 3, 4]
    assert list(history.loc[history["kind"] == "eval", "step"]) == [0, 2, 4]
    assert history.loc[history["kind"] == "eval", "accuracy"].iloc[-1] == run.summary()["final_eval_accuracy"]
    assert run.checkpoints() == [tiny_run / "checkpoint.pt"]
    assert run.checkpoint_state()["step"] == 4
    assert run.spec == f"run:{tiny_run}" and run.wise() is None


def test_writer_says_running_until_finished_and_writes_atomically(tmp_path):
    seen = []
    with RunWriter(tmp_path / "r", TINY_FINETUNE, callback=seen.append) as writer:
        assert Run.open(tmp_path / "r").status == "running"
        writer.log({"kind": "train", "step": 1, "loss": 2.0})
        writer.save_checkpoint({"encoder": {"w": torch.ones(2)}, "head": {}, "step": 1})
        assert Run.open(tmp_path / "r").records() == [{"kind": "train", "step": 1, "loss": 2.0}]
        result = writer.finish("stopped", 1, None)
    assert seen == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert (result.status, result.steps_done) == ("stopped", 1)
    run = Run.open(tmp_path / "r")
    assert run.status == "stopped" and torch.equal(run.checkpoint_state()["encoder"]["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["checkpoint.pt", "config.json", "history.jsonl",
                                                                  "summary.json"]  # no temporaries left


def test_a_run_keeps_the_history_of_its_feature_space(tiny_run):
    """Every evaluation stores the probe set's features (step 0: the pre-trained encoder) and scores them
    against step 0's; the snapshots read back equal to recomputing the features from the weights."""
    from proxyfda.metrics import knn_overlap, linear_cka
    from proxyfda.features import embed
    from proxyfda.knn import knn_graph

    run = Run.open(tiny_run)
    assert run.probe_steps() == [0, 2, 4]
    images = run.probe_images()
    assert len(images) == len(run.probe_features(0)) == 60 and len(set(images.labels)) == 10
    assert (tiny_run / "probe" / "step-000004.npy").stat().st_size < 60 * 1280 * 2 + 200  # float16
    pre = embed(create_encoder(run.config.base_encoder, image_size=32), images)
    now = embed(create_encoder(run.spec, image_size=32), images)
    np.testing.assert_allclose(run.probe_features(0), pre, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(run.probe_features(4), now, atol=2e-3, rtol=2e-3)
    evals = run.history().query("kind == 'eval'").set_index("step")
    assert evals.loc[0, "probe_overlap"] == 1.0 and evals.loc[0, "probe_cka"] == pytest.approx(1.0)
    graphs = [knn_graph(x, 10, backend="torch").indices for x in (pre, now)]
    assert evals.loc[4, "probe_overlap"] == pytest.approx(knn_overlap(*graphs).mean(), abs=0.02)
    assert evals.loc[4, "probe_cka"] == pytest.approx(linear_cka(pre, now), abs=1e-3)
    with pytest.raises(ProxyFDAError, match=r"no probe snapshot at step 3; it has \[0, 2, 4\]"):
        run.probe_features(3)


def test_list_runs_and_wise_runs_go_through_the_owner(tiny_run, tmp_path):
    wise = wise_run(tiny_run, 0.25, tmp_path / "wise")
    found = list_runs(tmp_path)
    assert [r.name for r in found] == ["wise"]
    assert found[0].wise() == {"source": str(tiny_run), "alpha": 0.25} and found[0].status == "completed"
    assert found[0].checkpoint_state()["head"].keys() == Run.open(tiny_run).checkpoint_state()["head"].keys()
    assert list_runs(tmp_path / "nowhere") == []
    with pytest.raises(ProxyFDAError, match="not a proxyfda run directory"):
        Run.open(wise / "nothing")


def test_a_damaged_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ProxyFDAError, match="not valid JSON"):
        Run.open(tmp_path)


def test_the_method_table_drives_the_defaults():
    for name, method in METHODS.items():
        assert method.regularizer is None or method.regularizer in list_regularizers(), name
    safe = resolve_config(FinetuneConfig(method="safe"))
    assert (safe.steps, safe.lr, safe.batch_size, safe.weight_decay) == (200, 1e-4, 32, 0.0)  # SAFE's own recipe
    naive = resolve_config(FinetuneConfig())
    assert (naive.steps, naive.lr, naive.batch_size, naive.weight_decay, naive.sampler) == (300, 1e-3, 64, 0.01, "epoch")
    assert resolve_config(FinetuneConfig(method="proxy-fda")).sampler == "balanced"
    assert resolve_config(FinetuneConfig(method="safe", steps=7, lr=0.5)).steps == 7  # what the user sets wins
    assert resolve_config(FinetuneConfig(method="fda", sampler="epoch")).sampler == "epoch"
    assert "beta_grid" in SAFE_OPTIONS and "steps" not in SAFE_OPTIONS
    resolve_config(FinetuneConfig(method="safe", reg_options={"beta_grid": [0.0, 1.0]}))
    with pytest.raises(ProxyFDAError, match="SAFE has no option"):
        resolve_config(FinetuneConfig(method="safe", reg_options={"alpha": 1.0}))
    with pytest.raises(ProxyFDAError, match="unknown fine-tuning method 'magic'; available: naive, l2sp"):
        get_method("magic")


@pytest.fixture
def tiny_default(monkeypatch, tmp_path):
    """A fresh cache in which the default fine-tuned encoder is a 4-step fine-tune (not yet built)."""
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runs, "DEFAULT_FINETUNE", TINY_FINETUNE)
    return tmp_path


def test_default_finetuned_resolves_in_one_place_for_every_entry_point(tiny_default, capsys):
    with pytest.raises(ProxyFDAError, match="proxyfda prepare"):
        create_encoder("default-finetuned")
    with pytest.raises(ProxyFDAError, match="proxyfda prepare"):  # a config that saved the resolved alias
        create_encoder(canonical_spec("default-finetuned"))
    # `finetune --base-encoder default-finetuned` builds the default first, then fine-tunes on top of it
    out = tiny_default / "on-default"
    assert main(["finetune", "--base-encoder", "default-finetuned", "--data", "digits:train", "--eval-data",
                 "digits:test", "--image-size", "32", "--steps", "2", "--batch-size", "8", "--eval-size", "20",
                 "--out", str(out)]) == 0
    default_spec = canonical_spec("default-finetuned")
    assert default_spec == f"run:{runs.default_run_dir()}" and runs.default_run_ready()
    assert Run.open(out).config.base_encoder == default_spec  # the alias is saved as the run it names
    assert create_encoder("default-finetuned").spec == default_spec
    fine = create_encoder(f"run:{out}")
    assert fine.weights_hash() != create_encoder(default_spec).weights_hash()


def test_spec_fingerprints_follow_file_content(tiny_run, tmp_path):
    assert spec_fingerprint("efficientnet-lite0", 32) == spec_fingerprint(" efficientnet-lite0", 32)
    assert spec_fingerprint("efficientnet-lite0", 32) != spec_fingerprint("efficientnet-lite0", 64)
    assert spec_fingerprint("open_clip:RN50:openai") is None and spec_fingerprint("run:/nowhere") is None
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        (copy / name).write_bytes((tiny_run / name).read_bytes())
    before = spec_fingerprint(f"run:{copy}")
    assert before is not None and before == spec_fingerprint(f"run:{copy}")
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    state["encoder"]["backbone._conv_head.weight"] += 1.0
    torch.save(state, copy / "checkpoint.pt")
    assert spec_fingerprint(f"run:{copy}") != before  # new weights: features can never be served stale


def test_features_found_from_the_source_without_building_the_encoder(tiny_run, monkeypatch):
    from proxyfda import drift
    from proxyfda.data import load_images

    images = load_images("digits:test", n=30)
    first = drift.encoder_features(f"run:{tiny_run}", images, 32)

    def no_building(spec, image_size):
        raise AssertionError("the encoder was built although its features were cached")

    again = drift.encoder_features(f"run:{tiny_run}", images, 32, make_encoder=no_building)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError, match="was built"):  # another resolution is another source
        drift.encoder_features(f"run:{tiny_run}", images, 64, make_encoder=no_building)


def test_cached_drift_is_compute_drift_read_back(tmp_path, monkeypatch):
    from proxyfda import drift

    rng = np.random.default_rng(0)
    x_a = rng.normal(size=(60, 8)).astype(np.float32)
    x_b = (x_a + 0.7 * rng.normal(size=(60, 8))).astype(np.float32)
    labels = np.arange(60) % 3
    config = DriftConfig(data="digits:test", n=60, k=5)
    fresh = drift.cached_drift(x_a, x_b, labels, ["a", "b", "c"], k=5, root=tmp_path, config=config)
    expected = drift.compute_drift(x_a, x_b, labels, ["a", "b", "c"], k=5, config=config)
    def recompute(*args, **kwargs):
        raise AssertionError("recomputed a cached report")

    monkeypatch.setattr(drift, "compute_drift", recompute)
    again = drift.cached_drift(x_a, x_b, labels, ["a", "b", "c"], k=5, root=tmp_path, config=config)
    for report in (fresh, again):  # every field of the report, as computed
        for field in dataclasses.fields(drift.DriftReport):
            got, want = getattr(report, field.name), getattr(expected, field.name)
            if field.name == "_drift_order":
                continue
            if isinstance(want, drift.KnnGraph):
                np.testing.assert_array_equal(got.indices, want.indices)
                np.testing.assert_array_equal(got.similarities, want.similarities)
            elif isinstance(want, np.ndarray):
                np.testing.assert_array_equal(got, want)
            elif isinstance(want, pd.DataFrame):
                assert got.equals(want)
            else:
                assert got == want and type(got) is type(want), field.name
    asked = dict(x_a=x_a, x_b=x_b, labels=labels, class_names=["a", "b", "c"], k=5, root=tmp_path)
    for other in (dict(k=4), dict(labels=labels[::-1]), dict(class_names=["a", "b", "z"]), dict(backend="exact"),
                  dict(x_b=x_a)):
        with pytest.raises(AssertionError, match="recomputed"):  # any other input: another report
            drift.cached_drift(**{**asked, **other})
    monkeypatch.undo()
    said = []  # a report computed afresh gets the backend asked for and reports its progress
    hnsw = drift.cached_drift(**asked, backend="faiss-hnsw", progress=lambda message, at: said.append(message))
    assert hnsw.metrics["knn_backend"] == "faiss-hnsw" and any("faiss-hnsw" in message for message in said)


def test_a_runs_timeline_matches_brute_force_neighbours(tiny_run):
    """Per-point overlap with step 0 at every snapshot, the first break and the broke-first table, each
    against a brute-force recomputation from the stored snapshots."""
    from proxyfda.drift import run_timeline

    run = Run.open(tiny_run)
    timeline = run_timeline(tiny_run, k=5)
    assert timeline.steps == [0, 2, 4] and timeline.overlap.shape == (3, 60)

    def brute_neighbours(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:5]) for row in sims]

    pre = brute_neighbours(run.probe_features(0).astype(np.float64))
    for s, step in enumerate(timeline.steps):
        now = brute_neighbours(run.probe_features(step).astype(np.float64))
        expected = np.array([len(a & b) / 5 for a, b in zip(pre, now)])
        assert np.mean(np.abs(timeline.overlap[s] - expected)) < 0.02  # float ties may swap a neighbour
    broke = timeline.first_break(0.5)
    for i in range(60):
        below = [step for s, step in enumerate(timeline.steps) if timeline.overlap[s, i] < 0.5]
        assert broke[i] == (below[0] if below else -1)
    table = timeline.broke_first(n=5)
    assert list(table.columns) == ["id", "class", "broke at step", "step 0", "step 2", "step 4"]
    assert table["broke at step"].is_monotonic_increasing and (table["step 0"] == 1.0).all()
    assert list(timeline.scores["step"]) == [0, 2, 4] and timeline.scores["overlap@k"].iloc[0] == 1.0
    assert timeline.scores["task accuracy"].iloc[-1] == run.summary()["final_eval_accuracy"]
    accuracy = {r["step"]: r["accuracy"] for r in run.records() if r["kind"] == "eval"}
    for s, row in timeline.scores.iterrows():  # each column from its own score, by an independent formula
        step = int(row["step"])
        pre, now = run.probe_features(0).astype(np.float64), run.probe_features(step).astype(np.float64)
        assert row["overlap@k"] == pytest.approx(timeline.overlap[s].mean())
        assert row["linear CKA"] == pytest.approx(gram_cka(pre, now), rel=1e-4)
        assert row["task accuracy"] == accuracy[step]
    assert timeline.scores["CKNNA"].iloc[0] == pytest.approx(1.0)
    for snapshot, step in zip(timeline.features, timeline.steps):  # what the Over-time maps are drawn from
        np.testing.assert_array_equal(snapshot, run.probe_features(step))


def test_a_point_breaks_when_its_overlap_falls_below_the_threshold():
    """first_break: the first step whose overlap is strictly below the threshold (0.5 by default), -1 if
    none; broke_first: the earliest breaks first, ties by the lower final overlap."""
    from proxyfda.drift import Timeline

    overlap = np.array([[1.0, 1.0, 1.0, 1.0, 0.3], [0.5, 0.4, 1.0, 0.2, 0.2], [0.4, 0.1, 0.9, 0.3, 0.1]])
    images = load_images("digits:test", n=40)
    timeline = Timeline([0, 5, 10], overlap, pd.DataFrame(), images.subset(np.arange(5)), 10, [])
    assert timeline.first_break().tolist() == [10, 5, -1, 5, 0]  # point 4 starts below (a hand-made matrix)
    assert timeline.first_break(0.95).tolist() == [5, 5, 10, 5, 0]
    table = timeline.broke_first(n=4)
    assert table["id"].tolist() == [4, 1, 3, 0] and table["broke at step"].tolist() == [0, 5, 5, 10]
    assert table["step 10"].tolist() == [0.1, 0.1, 0.3, 0.4]
    many = Timeline([0, 5], np.array([[1.0] * 30, [0.0] * 30]), pd.DataFrame(), images.subset(np.arange(30)), 10, [])
    assert many.broke_first()["id"].tolist() == list(range(20))  # 20 rows by default


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in its N×N (HSIC) form."""
    x, y = x - x.mean(0), y - y.mean(0)
    gx, gy = x @ x.T, y @ y.T
    return float((gx * gy).sum() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def test_a_run_without_history_says_so(tmp_path):
    from proxyfda.drift import run_timeline

    with RunWriter(tmp_path / "r", TINY_FINETUNE) as writer:
        writer.finish("completed", 0, None)
    with pytest.raises(ProxyFDAError, match="has no feature history"):
        run_timeline(tmp_path / "r")


def test_two_snapshots_are_a_timeline_and_one_is_not(tiny_run, tmp_path):
    """Step 0 and one evaluation suffice; the default k is the probe's own (10, as the run logged it)."""
    from proxyfda.drift import run_timeline
    from proxyfda.training import PROBE_K

    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "probe" / "step-000004.npy").unlink()
    timeline = run_timeline(run)
    assert timeline.steps == [0, 2] and timeline.k == PROBE_K == 10
    (run / "probe" / "step-000002.npy").unlink()
    with pytest.raises(ProxyFDAError, match=r"has no feature history \(snapshots at steps \[0\]\)"):
        run_timeline(run)


def test_wise_curve_runs_from_the_pretrained_encoder_to_the_run(tiny_run):
    from proxyfda.interpolation import wise_curve

    run = Run.open(tiny_run)
    curve = wise_curve(tiny_run, alphas=(1.0, 0.0, 0.5))
    assert list(curve.alpha) == [0.0, 0.5, 1.0]
    # α = 0 is the pre-trained encoder (its probe features equal step 0's up to float16), α = 1 the run itself
    assert curve.probe_overlap[0] == pytest.approx(1.0, abs=0.02) and curve.probe_cka[0] == pytest.approx(1.0, abs=1e-3)
    last = [r for r in run.records() if r.get("kind") == "eval"][-1]
    assert curve.accuracy[2] == pytest.approx(run.summary()["final_eval_accuracy"])
    assert curve.probe_overlap[2] == pytest.approx(last["probe_overlap"], abs=0.02)


def test_a_probe_that_cannot_be_scored_is_logged_and_the_run_goes_on(tmp_path, monkeypatch):
    from conftest import TINY_FINETUNE
    from proxyfda import training

    def collapsed(pre, now, images, k=10):
        raise ProxyFDAError("y has all rows identical, so it has no geometry to compare")

    monkeypatch.setattr(training, "probe_scores", collapsed)
    result = training.finetune(TINY_FINETUNE, tmp_path / "run")
    assert result.status == "completed"
    evals = [r for r in Run.open(tmp_path / "run").records() if r["kind"] == "eval"]
    assert len(evals) == 3 and all("all rows identical" in r["probe_problem"] for r in evals)


def test_a_silent_writer_writes_nothing_and_reports_what_it_was_told(tmp_path):
    """What ranks other than 0 of a torchrun launch hold instead of a RunWriter."""
    from proxyfda.runs import RunResult, SilentWriter

    with SilentWriter(tmp_path / "run") as run:
        run.log({"kind": "train", "step": 1})
        run.save_probe_rows(np.arange(3))
        run.save_probe(0, np.zeros((3, 2)))
        run.save_checkpoint({"step": 1})
        result = run.finish("completed", 7, 0.25, world_size=2)
    assert result == RunResult(tmp_path / "run", "completed", 7, 0.25) and not (tmp_path / "run").exists()


def test_embedding_files_are_named_by_their_file_and_column():
    from proxyfda.drift import encoder_names
    from proxyfda.vectors import describe

    assert describe("/data/x/before.npy") == "before.npy"
    assert describe("/data/x/after.parquet#emb") == "after.parquet#emb"
    assert encoder_names("vectors:/d/a.csv#v", "run:/d/runs/naive-s0", "open_clip:RN50:openai") == \
        ["a.csv#v", "naive-s0", "open_clip:RN50:openai"]
    # relative paths keep their prefix in a plain file name; a checkpoint path inside a spec is not a run's
    assert encoder_names("run:naive-s0", "vectors:b.npy", "open_clip:RN50:/ckpt/epoch_3.pt") == \
        ["naive-s0", "b.npy", "open_clip:RN50:/ckpt/epoch_3.pt"]


def test_probe_images_are_the_eval_images_the_run_drew_with_its_own_seed(tmp_path):
    config = TINY_FINETUNE.replace(seed=3, eval_data="digits:test", eval_size=40)
    with RunWriter(tmp_path / "r", config) as writer:
        writer.save_probe_rows(np.arange(10))
        writer.finish("completed", 0, None)
    drawn = load_images("digits:test", n=40, seed=3)
    probe = Run.open(tmp_path / "r").probe_images()
    np.testing.assert_array_equal(probe.pixels, drawn.pixels[:10])
    assert not np.array_equal(probe.pixels, load_images("digits:test", n=40, seed=0).pixels[:10])
