"""`proxyfda finetune`, `wise` and `forgetting` through cli.main, on tiny real runs (or stubbed probes)."""

from __future__ import annotations

import json

import pytest
import torch

from proxyfda.cli import main
from proxyfda.encoders import create_encoder

from conftest import TINY_FINETUNE
from test_forgetting import DELTA, L2, OTDD, STUB_RUNS, stub_world  # noqa: F401  (fixture)

TINY_ARGS = ["--data", TINY_FINETUNE.data, "--eval-data", TINY_FINETUNE.eval_data, "--image-size", "32",
             "--steps", "4", "--batch-size", "16", "--eval-every", "2", "--eval-size", "60", "--warmup-steps", "1",
             "--lr", "0.003"]


def read_history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_finetune_with_reg_options_writes_a_loadable_run(tmp_path, capsys):
    out = tmp_path / "fda"
    # FDA extracts pre-trained features of its whole training set: train on the 360 test digits to stay fast
    code = main(["finetune", "--method", "fda", "--reg-options", '{"k": 4, "weight": 2.0}', *TINY_ARGS,
                 "--data", "digits:test", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "fda"
    assert config["reg_options"] == {"k": 4, "weight": 2.0, "preset": "ours"}  # saved with the method's defaults
    assert (config["steps"], config["image_size"], config["data"]) == (4, 32, "digits:test")
    history = read_history(out)
    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [0, 2, 4]
    for r in train:  # λ = 2 reached the regulariser: its loss term is twice its FDA value
        assert r["reg_loss"] == pytest.approx(2.0 * r["reg_fda"], rel=1e-5)
        assert r["loss"] == pytest.approx(r["task"] + r["reg_loss"], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("seconds") > 0  # the run's wall time
    assert summary == {"status": "completed", "steps_done": 4, "final_eval_accuracy": evals[-1]["accuracy"],
                       "world_size": 1}  # one process (tests/test_distributed.py runs two)
    printed = capsys.readouterr().out
    assert f"completed after 4 steps; eval accuracy {evals[-1]['accuracy']}" in printed
    assert f"run:{out}" in printed
    encoder = create_encoder(f"run:{out}")
    assert encoder.image_size == 32
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4


@pytest.mark.parametrize("text, message", [
    ('{"k": 4,', "not JSON"),
    ('[4]', "expected a JSON object"),
])
def test_finetune_bad_reg_options_json_is_an_argparse_error(tmp_path, capsys, text, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--method", "fda", "--reg-options", text, "--out", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_finetune_unknown_reg_option_exits_2_with_a_message(tmp_path, capsys):
    code = main(["finetune", "--method", "fda", "--reg-options", '{"kk": 4}', *TINY_ARGS,
                 "--out", str(tmp_path / "bad")])
    assert code == 2
    err = capsys.readouterr().err
    assert "proxyfda: error: regulariser 'fda' has no option(s) kk" in err


def test_finetune_reg_options_for_a_method_without_regulariser_exit_2(tmp_path, capsys):
    code = main(["finetune", "--method", "naive", "--reg-options", '{"k": 4}', *TINY_ARGS,
                 "--out", str(tmp_path / "naive")])
    assert code == 2
    assert "has no regulariser" in capsys.readouterr().err


def _float_params(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_wise_interpolates_the_run_with_its_pretrained_encoder(tiny_run, tmp_path, capsys, alpha):
    out = tmp_path / f"wise{alpha}"
    assert main(["wise", "--run", str(tiny_run), "--alpha", str(alpha), "--out", str(out)]) == 0
    assert json.loads((out / "wise.json").read_text()) == {"source": str(tiny_run), "alpha": alpha}
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_run / "config.json").read_text())
    source = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    mixed = torch.load(out / "checkpoint.pt", weights_only=True)
    assert mixed["step"] == source["step"] == 4
    for name, value in source["head"].items():
        assert torch.equal(mixed["head"][name], value)
    pre = create_encoder("efficientnet-lite0", image_size=32).state_dict()
    changed = 0
    for name, ft in _float_params(source["encoder"]).items():
        expected = pre[name] + alpha * (ft - pre[name])
        torch.testing.assert_close(mixed["encoder"][name], expected, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(ft, pre[name])
    assert changed > 0  # the run did move some weights, so alpha matters
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert f"wrote WiSE-FT (alpha={alpha})" in capsys.readouterr().out


def test_wise_bad_alpha_exits_2(tiny_run, tmp_path, capsys):
    assert main(["wise", "--run", str(tiny_run), "--alpha", "1.5", "--out", str(tmp_path / "w")]) == 2
    assert "proxyfda: error:" in capsys.readouterr().err


def test_forgetting_writes_the_report_and_prints_the_table(stub_world, tmp_path, capsys):  # noqa: F811
    dirs, _ = stub_world
    out = tmp_path / "forgetting"
    assert main(["forgetting", "--runs", *map(str, dirs), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["held_out"] == ["setA:test", "setB:all"]
    for name in ("r1", "r2", "r3"):
        run = report["runs"][name]
        assert run["method"] == STUB_RUNS[name]["method"]
        assert run["A_LP"] == STUB_RUNS[name]["acc"]["task:test"]
        for key, table in (("delta_LP", DELTA), ("otdd", OTDD), ("l2", L2)):
            assert run[key] == pytest.approx(table[name], abs=1e-6), (name, key)
    assert report["correlation_with_delta_LP"]["otdd"]["spearman"] == pytest.approx(-1.0)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert rows == {"r1": ["naive", "99.0", "-10.0", "1.400", "1.500"],
                    "r2": ["fda", "(ours)", "97.0", "+0.0", "0.600", "0.300"],  # labelled with its preset
                    "r3": ["l2sp", "95.0", "-1.5", "0.700", "0.400"]}


def test_forgetting_on_a_non_run_directory_exits_2(tmp_path, capsys):
    assert main(["forgetting", "--runs", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "is not a proxyfda run directory" in capsys.readouterr().err  # the run directory owner's message
