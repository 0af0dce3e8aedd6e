"""Every metric, drift report and CLI output says what it left out and why (issue 9, "every error a sentence").

Each case is checked against an independent reference: brute-force sets for overlap@k, the dense
Gram form in float64 for CKA, scipy for Procrustes, sklearn for trustworthiness.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import procrustes
from sklearn.manifold import trustworthiness as sk_trustworthiness
from streamlit.testing.v1 import AppTest

from proxyfda import metrics as M
from proxyfda.drift import calibrate, compute_drift
from proxyfda.errors import ProxyFDAError
from proxyfda.forgetting import run_names
from proxyfda.knn import knn_graph
from proxyfda.validation import check_features


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from the centred N×N Gram matrices, in float64 (the definition, not our feature form)."""
    h = np.eye(len(x)) - 1.0 / len(x)
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


# ---------------------------------------------------------------- k too large for some scores


def test_k_of_n_minus_1_names_the_rank_scores_it_leaves_out_and_the_largest_usable_k(tmp_path):
    rng = np.random.default_rng(0)
    x_a, x_b = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    labels = np.zeros(8, dtype=int)
    report = compute_drift(x_a, x_b, labels, ["only"], 7, backend="torch")
    m = report.metrics
    assert "trustworthiness" not in m and "continuity" not in m
    for name in ("trustworthiness", "continuity"):
        assert f"{name} needs k < N/2 (k=7, N=8)" in m["omitted"][name]
        assert "k ≤ 3" in m["omitted"][name]
    assert json.loads((report.save(tmp_path) / "metrics.json").read_text())["omitted"] == m["omitted"]
    # the largest usable k named there does give the scores, equal to sklearn's
    usable = compute_drift(x_a, x_b, labels, ["only"], 3, backend="torch").metrics
    assert "omitted" not in usable
    assert usable["trustworthiness"] == pytest.approx(sk_trustworthiness(x_a, _unit(x_b), n_neighbors=3,
                                                                         metric="cosine"))
    assert "trustworthiness" in compute_drift(x_a, x_b, labels, ["only"], 4, backend="torch").metrics["omitted"]


# ---------------------------------------------------------------- values too large for float32


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_huge_or_tiny_finite_features_give_the_same_scores_as_ordinary_ones(scale):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6))
    y = x @ rng.normal(size=(6, 5)) + 0.5 * rng.normal(size=(30, 5))
    assert M.linear_cka(x * scale, y * scale) == pytest.approx(_gram_cka(x, y), rel=1e-10)
    assert M.procrustes_disparity(x * scale, y[:, :5] * scale) == pytest.approx(
        procrustes(x, np.hstack([y, np.zeros((30, 1))]))[2], abs=1e-10)
    assert M.mean_l2_drift(x * scale, np.hstack([y, x[:, :1]]) * scale) == pytest.approx(
        np.linalg.norm(_unit(x) - _unit(np.hstack([y, x[:, :1]])), axis=1).mean())
    assert M.mean_l2_drift(x * scale, x * 2 * scale, normalize=False) / scale == pytest.approx(
        np.linalg.norm(x, axis=1).mean())
    assert M.trustworthiness(x * scale, y * scale, 4) == pytest.approx(sk_trustworthiness(x, y, n_neighbors=4))
    labels = np.arange(30) % 3
    big = compute_drift(x * scale, np.hstack([y, x[:, :1]]) * scale, labels, list("abc"), 4, backend="torch")
    plain = compute_drift(x, np.hstack([y, x[:, :1]]), labels, list("abc"), 4, backend="torch")
    np.testing.assert_array_equal(big.graph_a.indices, plain.graph_a.indices)
    np.testing.assert_array_equal(big.graph_b.indices, plain.graph_b.indices)
    for name, value in plain.metrics.items():
        assert big.metrics[name] == pytest.approx(value, rel=1e-9), name


def test_float32_inputs_beyond_its_range_are_called_too_large_not_nan():
    x = np.random.default_rng(2).normal(size=(10, 3))
    x[[3, 7]] *= 1e200
    with pytest.raises(ProxyFDAError, match=r"x has 2 row\(s\) \(rows 3, 7\) with values too large for float32 "
                                            r"\(largest magnitude [0-9.]+e\+(199|200); float32 holds up to 3.4e\+38\)"):
        knn_graph(x, 2)
    assert check_features(x, dtype=np.float64)[3, 0] == x[3, 0]  # float64 holds them: no error there
    x[5, 1] = np.nan
    with pytest.raises(ProxyFDAError, match=r"with NaN or inf values \(rows 5\)"):
        check_features(x)


# ---------------------------------------------------------------- kNN graphs with repeated ids


def _brute_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(ra) & set(rb)) / a.shape[1] for ra, rb in zip(a.tolist(), b.tolist())])


def test_knn_overlap_equals_brute_force_sets_and_refuses_a_row_with_a_repeated_id():
    rng = np.random.default_rng(3)
    n, k = 40, 6
    a = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    b = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    np.testing.assert_allclose(M.knn_overlap(a, b), _brute_overlap(a, b))
    bad = b.copy()
    bad[2, 1] = bad[2, 0]
    with pytest.raises(ProxyFDAError, match=r"idx_b lists the same neighbour twice in 1 row\(s\) \(rows 2\)"):
        M.knn_overlap(a, bad)
    with pytest.raises(ProxyFDAError, match=r"rows 2"):
        M.jaccard(a, bad)
    # the case: 3 ids, one repeated, which used to give 1.67
    with pytest.raises(ProxyFDAError, match="same neighbour twice"):
        M.knn_overlap(np.array([[1, 1, 2], [0, 2, 3], [0, 1, 3], [0, 1, 2]]),
                      np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]))


# ---------------------------------------------------------------- spaces of different widths


def test_different_widths_give_every_score_but_l2_drift_and_say_why(tmp_path):
    rng = np.random.default_rng(4)
    x_a = rng.normal(size=(24, 5))
    x_b = np.hstack([x_a, rng.normal(size=(24, 2))])
    labels = np.arange(24) % 3
    report = compute_drift(x_a, x_b, labels, list("abc"), 3, backend="torch")
    m = report.metrics
    assert "mean_l2_drift" not in m and np.isnan(report.l2_drift).all()
    assert "same width in both spaces (pre-trained 5, fine-tuned 7)" in m["omitted"]["mean_l2_drift"]
    assert m["linear_cka"] == pytest.approx(_gram_cka(x_a, x_b))
    idx_a = np.argsort(-(_unit(x_a) @ _unit(x_a).T - 2 * np.eye(24)), axis=1)[:, :3]
    idx_b = np.argsort(-(_unit(x_b) @ _unit(x_b).T - 2 * np.eye(24)), axis=1)[:, :3]
    np.testing.assert_allclose(report.overlap, _brute_overlap(idx_a, idx_b))
    assert {"cknna", "trustworthiness", "continuity", "procrustes_disparity"} <= set(m)
    assert "mean_l2_drift" not in set(calibrate(report, x_a, x_b, permutations=3, resamples=50)["score"])
    report.save(tmp_path)
    assert len(report.most_drifted(5)) == 5


def drift_panel_script():
    """Runs inside AppTest: the Drift Explorer's metrics panel, maps and neighbour panel for a report with
    k = N − 1 over spaces of different widths."""
    import numpy as np

    from app.linked_maps import render_linked_maps
    from app.neighbours import neighbour_panel
    from app.report_views import metrics_panel
    from proxyfda.data import ImageSet
    from proxyfda.drift import compute_drift

    rng = np.random.default_rng(5)
    labels = np.arange(8) % 2
    report = compute_drift(rng.normal(size=(8, 5)), rng.normal(size=(8, 7)), labels, ["a", "b"], 7, backend="torch")
    images = ImageSet(spec="hand", labels=labels, class_names=["a", "b"],
                      pixels=np.zeros((8, 8, 8, 3), dtype=np.uint8))
    metrics_panel(report)
    coords = rng.normal(size=(8, 2))
    render_linked_maps(coords, coords, report, "L2 drift", 0)
    neighbour_panel(report, images, 0, show_images=False)


def test_the_drift_explorer_says_which_scores_it_left_out():
    at = AppTest.from_function(drift_panel_script, default_timeout=60).run()
    assert not at.exception
    values = {metric.label: metric.value for metric in at.metric}
    assert values["trustworthiness"] == values["continuity"] == values["mean L2 drift"] == "n/a"
    notes = " ".join(caption.value for caption in at.caption)
    assert "Not computed: " in notes and "needs k < N/2 (k=7, N=8)" in notes and "(pre-trained 5, fine-tuned 7)" in notes
    assert "L2 drift n/a (the two spaces differ in width)" in " ".join(md.value for md in at.markdown)


# ---------------------------------------------------------------- runs with the same folder name


def test_run_names_lengthen_only_the_names_that_clash(tmp_path):
    paths = [tmp_path / "a" / "naive", tmp_path / "b" / "naive", tmp_path / "b" / "fda",
             tmp_path / "x" / "a" / "l2sp", tmp_path / "y" / "a" / "l2sp"]
    assert run_names(paths) == ["a/naive", "b/naive", "fda", "x/a/l2sp", "y/a/l2sp"]
    with pytest.raises(ProxyFDAError, match=r"naive is listed more than once"):
        run_names([tmp_path / "a" / "naive", tmp_path / "a" / ".." / "a" / "naive"])


# ---------------------------------------------------------------- the command line


@pytest.fixture
def eight_images(monkeypatch):
    """`proxyfda drift` over 8 stub images; embedding them returns fixed random features, counted in ``calls``."""
    import proxyfda.drift
    from proxyfda.data import ImageSet

    calls = []
    images = ImageSet(spec="stub", labels=np.arange(8) % 2, class_names=["a", "b"],
                      pixels=np.zeros((8, 8, 8, 3), dtype=np.uint8))

    def drift_features(config, images, progress=None, make_encoder=None):
        calls.append(config)
        rng = np.random.default_rng(6)
        return rng.normal(size=(8, 5)), rng.normal(size=(8, 5))

    monkeypatch.setattr(proxyfda.drift, "load_images", lambda spec, n=None, seed=0, labels="": images)
    monkeypatch.setattr(proxyfda.drift, "drift_features", drift_features)
    return calls


DRIFT_ARGS = ["drift", "--pretrained", "pre", "--finetuned", "ft", "--data", "stub", "--n", "0"]


def test_drift_refuses_k_of_n_before_embedding_and_names_the_largest_k(eight_images, tmp_path, capsys):
    from proxyfda.cli import main

    assert main([*DRIFT_ARGS, "--k", "8", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "proxyfda: error: stub gave 8 images (n=all): k must be smaller than the number of points N=8" in err
    assert "k ≤ N-1 = 7" in err
    assert eight_images == []  # refused before any encoder ran


def test_drift_prints_and_saves_the_scores_it_left_out(eight_images, tmp_path, capsys):
    from proxyfda.cli import main

    assert main([*DRIFT_ARGS, "--k", "7", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "not computed: trustworthiness needs k < N/2 (k=7, N=8)" in out
    assert "not computed: continuity needs k < N/2 (k=7, N=8)" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(saved["omitted"]) == {"trustworthiness", "continuity"} and "trustworthiness" not in saved


@pytest.mark.parametrize("command", [
    ["drift", "--pretrained", "pre", "--finetuned", "ft", "--data", "stub"],
    ["embed", "--encoder", "pre", "--data", "stub"],
    ["forgetting", "--runs", "no-such-run"],
    ["wise", "--run", "no-such-run"],
])
def test_every_out_that_cannot_be_written_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    """A file stands where --out needs a folder: each command says so first (the runs named here do not even
    exist, so any work done before the check would have failed with another message)."""
    import proxyfda.drift
    from proxyfda.cli import main

    monkeypatch.setattr(proxyfda.drift, "load_images", lambda *a, **k: pytest.fail("work before the --out check"))
    (tmp_path / "taken").write_text("a file")
    assert main([*command, "--out", str(tmp_path / "taken" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"proxyfda: error: cannot write {tmp_path / 'taken' / 'out'}: {tmp_path / 'taken'} is a file" in err


def test_an_out_the_system_refuses_gives_its_reason(tmp_path, monkeypatch):
    import proxyfda.paths
    from proxyfda.paths import check_writable

    def refuse(dir=None):
        raise PermissionError(13, "Permission denied")

    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # probing leaves nothing behind
    with pytest.raises(ProxyFDAError, match=r"cannot write .*features.npy: it is a folder"):
        (tmp_path / "features.npy").mkdir()
        check_writable(tmp_path / "features.npy", is_file=True)
    monkeypatch.setattr(proxyfda.paths.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ProxyFDAError, match=rf"cannot write {tmp_path}/out: {tmp_path} does not accept new files "
                                            r"\(Permission denied\)"):
        check_writable(tmp_path / "out")

