"""The CI configuration of benchmarks/forgetting.py: real fine-tunes of the offline default
(short), probed on held-out Fashion-MNIST. Naive fine-tuning on digits must already forget."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import forgetting  # noqa: E402


@pytest.mark.slow  # real fine-tunes and probes
def test_quick_forgetting_benchmark(tmp_path, capsys):
    assert forgetting.main(["--quick", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "proxy-fda" in printed and "mean ΔLP" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["runs"]) == {"naive-s0", "proxy-fda-s0"}
    naive = report["runs"]["naive-s0"]
    assert naive["delta_LP"]["mean"] < 0.0, "naive fine-tuning on digits should lower the Fashion-MNIST probe"
    assert all(run["l2"]["mean"] > 0 and run["otdd"]["mean"] > 0 for run in report["runs"].values())
