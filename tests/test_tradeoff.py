"""benchmarks/tradeoff.py: the matched-accuracy table and the correlations on hand-made runs, and the
quick sweep end to end (real fine-tunes)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import QUICK_PROBE, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import tradeoff  # noqa: E402


def row(label, strength, seed, acc, delta, otdd=1.0, l2=1.0):
    return {"label": label, "strength": strength, "seed": seed, "A_LP": acc / 100,
            "delta_LP": {"mean": delta / 100}, "otdd": otdd, "l2": l2}


def test_matched_table_interpolates_each_seed_along_the_frontier():
    rows = [row("naive", None, 0, 98.0, -5.0), row("naive", None, 1, 97.0, -4.0),
            # seed 0: (96, -1) (97.8, -3); seed 1: (95, 0) (96.8, -2)
            row("m", 1.0, 0, 96.0, -1.0), row("m", 0.1, 0, 97.8, -3.0),
            row("m", 1.0, 1, 95.0, 0.0), row("m", 0.1, 1, 96.8, -2.0)]
    table = tradeoff.matched_table(rows)
    # naive − 0.5: seed 0 at 97.5 → −1 + (1.5/1.8)(−2); seed 1 at 96.5 → 0 + (1.5/1.8)(−2)
    s0, s1 = -1.0 - 2.0 * 1.5 / 1.8, -2.0 * 1.5 / 1.8
    assert table["m"]["naive-0.5"] == pytest.approx([np.mean([s0, s1]), np.std([s0, s1]), 2])
    # naive − 2: 96.0 and 95.0, the strong ends exactly
    assert table["m"]["naive-2"] == pytest.approx([-0.5, 0.5, 2])
    assert table["naive"]["naive-1"] is None  # a single point has no frontier to interpolate on


def test_dominance_pairs_seeds_and_gives_a_t_interval():
    """Proxy-FDA minus another method at matched accuracy, per seed, against a hand computation."""
    from scipy import stats

    rows = [row("naive", None, s, 98.0, -6.0) for s in range(3)]
    for seed, shift in enumerate((0.5, 1.0, 2.0)):  # the other method forgets 0.5, 1, 2 points more
        rows += [row("proxy-fda (ours)", 3.0, seed, 96.0, -1.0), row("proxy-fda (ours)", 0.3, seed, 98.0, -4.0),
                 row("l2sp", 5.0, seed, 96.0, -1.0 - shift), row("l2sp", 0.05, seed, 98.0, -4.0 - shift),
                 row("ldifs", 1.0, seed, 97.8, -2.0)]  # one point: never at the targets
    result = tradeoff.dominance(rows, "proxy-fda (ours)")
    cell = result["l2sp"]["naive-1"]
    gaps = [0.5, 1.0, 2.0]
    half = stats.t.ppf(0.975, 2) * np.std(gaps, ddof=1) / np.sqrt(3)
    assert cell["mean"] == pytest.approx(np.mean(gaps)) and cell["seeds"] == 3
    assert cell["ci"] == pytest.approx([np.mean(gaps) - half, np.mean(gaps) + half])
    assert result["ldifs"]["naive-1"] is None and "naive" not in result and "proxy-fda (ours)" not in result


def test_correlations_come_with_bootstrap_intervals():
    rng = np.random.default_rng(0)
    otdd = rng.random(30)
    rows = [row("m", None, i, 95.0, -3 * d + 0.1 * rng.normal(), otdd=d, l2=rng.random()) for i, d in enumerate(otdd)]
    result = tradeoff.correlations(rows, resamples=500)
    delta = [r["delta_LP"]["mean"] for r in rows]
    assert result["otdd"]["pearson"] == pytest.approx(np.corrcoef(otdd, delta)[0, 1])
    low, high = result["otdd"]["ci"]
    assert low <= result["otdd"]["pearson"] <= high and high < -0.8  # strongly tied, and the interval says so
    assert result["l2"]["ci"][0] < 0 < result["l2"]["ci"][1]  # unrelated: the interval straddles 0
    assert result["abs_otdd_minus_abs_l2"]["ci"][0] > 0 and result["n_runs"] == 30


@pytest.mark.slow  # real fine-tunes: three short runs, a WiSE-FT run and their probes (a minute or more)
def test_quick_sweep_writes_every_run_the_table_and_the_plot(tmp_path, monkeypatch):
    # 12 steps instead of --quick's 40, and one FDA strength instead of two: what is checked here is the
    # plumbing (runs, table, plot), not how much they forget, and the suite must stay under 20 minutes
    monkeypatch.setattr(tradeoff, "QUICK_HELD_OUT", QUICK_PROBE)
    monkeypatch.setattr(tradeoff, "QUICK", tradeoff.QUICK[:2] + (tradeoff.Sweep("fda", "weight", (3.0,), "ours"),))
    assert tradeoff.main(["--quick", "--steps", "12", "--runs-dir", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "tradeoff.json").read_text())
    labels = [(r["label"], r["strength"]) for r in result["runs"]]
    assert labels == [("naive", None), ("wise-ft", 0.5), ("wise-ft", 1.0), ("fda (ours)", 3.0)]
    for r in result["runs"]:
        assert {"A_LP", "delta_LP", "otdd", "l2", "overlap_at_k", "seconds", "seed", "preset"} <= set(r)
        assert 0.0 <= r["overlap_at_k"] <= 1.0 and r["seconds"] > 0
    naive, wise1 = result["runs"][0], result["runs"][2]
    assert wise1["A_LP"] == naive["A_LP"] and wise1["run"] == naive["run"]  # α = 1 is the naive run itself
    acc, delta = tradeoff.frontier(result["runs"], "fda (ours)")
    cell = result["matched"]["fda (ours)"]["naive-0.5"]
    target = 100 * naive["A_LP"] - 0.5
    if acc.min() <= target <= acc.max():
        assert cell[0] == pytest.approx(np.interp(target, acc, delta))
    else:
        assert cell is None
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 10_000
