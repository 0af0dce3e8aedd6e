"""The CI configuration of benchmarks/forgetting.py: real fine-tunes of the offline default (short),
probed on held-out Fashion-MNIST.

Whether 40 steps of naive fine-tuning lower the held-out probe is a finding, not a fixed fact: ΔLP came
out −2.4 points on one machine, −0.4 on another and exactly 0.0 on a third, each within a few images of
500. So the test checks what does not depend on that noise: the report's own arithmetic, and a run whose
answer is known exactly (WiSE-FT at α = 0 is the pre-trained encoder: no forgetting, no distance); it probes
on conftest's QUICK_PROBE (600 images) rather than the benchmark's 1,500.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import QUICK_PROBE, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import forgetting  # noqa: E402


@pytest.mark.slow  # real fine-tunes and probes
def test_quick_forgetting_benchmark(tmp_path, capsys, monkeypatch):
    from proxyfda.forgetting import forgetting_report
    from proxyfda.interpolation import wise_run

    monkeypatch.setattr(forgetting, "QUICK_HELD_OUT", QUICK_PROBE)
    runs = tmp_path / "runs"
    assert forgetting.main(["--quick", "--runs-dir", str(runs), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "proxy-fda" in printed and "mean ΔLP" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["runs"]) == {"naive-s0", "proxy-fda-s0"}
    for run in report["runs"].values():
        for table in ("delta_LP", "l2", "otdd"):
            assert run[table]["mean"] == pytest.approx(run[table]["fashion-mnist:test"])  # the one held-out set
        assert run["A_LP_pretrained"] == report["runs"]["naive-s0"]["A_LP_pretrained"]  # one pre-trained probe
    # 40 steps at lr 1e-3 turn the features far from where they were (cos ≈ 0 here; 0 means untouched)
    assert report["runs"]["naive-s0"]["l2"]["mean"] > 0.5

    untouched = wise_run(runs / "quick" / "naive-s0", 0.0, tmp_path / "wise-0")
    known = forgetting_report([untouched], held_out=forgetting.QUICK_HELD_OUT)["runs"]["wise-0"]
    assert known["delta_LP"]["mean"] == 0.0 and known["A_LP"] == known["A_LP_pretrained"]
    assert known["l2"]["mean"] == 0.0 and known["otdd"]["mean"] == pytest.approx(0.0, abs=1e-3)  # √ of round-off
