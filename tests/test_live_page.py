"""The Live fine-tune page under AppTest: start a tiny run, watch it, stop one, queue a second tab's,
and open a finished run in the Drift Explorer."""

from __future__ import annotations

import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from proxyfda.runs import Run

TINY = {"live.cfg.data": "digits:train", "live.cfg.eval_data": "digits:test", "live.cfg.image_size": 32,
        "live.cfg.steps": 4, "live.cfg.eval_every": 2, "live.cfg.method": "fda"}
SMALL_DRIFT = {"drift.cfg.data": "digits:test", "drift.cfg.n": 120, "drift.cfg.k": 5}


def live_page(**state) -> AppTest:
    """The app from its router, on the Live fine-tune page (so page links resolve as in the browser)."""
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/live_finetune.py")
    for key, value in {**TINY, **SMALL_DRIFT, **state}.items():
        at.session_state[key] = value
    return at.run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def poll_until(at: AppTest, condition, timeout: float = 300.0) -> AppTest:
    deadline = time.time() + timeout
    while not condition(at):
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)
        at.run()
    return at


def steps_shown(at: AppTest) -> int:
    """The step the progress bar reports ("… step 7/400 …"), 0 before it shows one."""
    found = re.search(r"step (\d+)/", at.get("progress")[0].proto.text) if at.get("progress") else None
    return int(found.group(1)) if found else 0


def finished(at: AppTest) -> bool:
    return bool(at.success or at.warning or at.error)


def test_start_watch_and_open_a_run_in_the_drift_explorer(runs_dir):
    at = live_page()
    assert not at.exception and [t.value for t in at.title] == ["Live fine-tune"]
    assert "Start fine-tune" in at.info[0].value
    button(at, "Start fine-tune").click().run()
    poll_until(at, finished)
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Run completed after 4 steps · task accuracy")
    assert "live.curves" in [c.key for c in at.get("plotly_chart")]
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_dir.name] and list(table["method"]) == ["fda (ours)"]
    assert table["strength"][0] == 1.0 and table["status"][0] == "completed"
    button(at, "Open in the Drift Explorer").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Drift Explorer"]
    assert at.session_state["drift.cfg.finetuned"] == f"run:{run_dir}"
    assert at.query_params["finetuned"] == f"run:{run_dir}" and at.query_params["image_size"] == "32"
    assert [m.label for m in at.metric][:1] == ["overlap@5"]


def test_stop_ends_a_run_that_keeps_a_checkpoint(runs_dir):
    at = live_page(**{"live.cfg.steps": 400, "live.cfg.eval_every": 1000, "live.cfg.method": "naive"})
    button(at, "Start fine-tune").click().run()
    poll_until(at, lambda at: steps_shown(at) >= 2)
    button(at, "Stop").click().run()
    poll_until(at, finished)
    assert at.success[0].value.startswith("Run stopped after")
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    run = Run.open(run_dir)
    assert run.status == "stopped" and 2 <= run.checkpoint_state()["step"] < 400


def test_a_second_tab_waits_its_turn_and_keeps_its_own_run(runs_dir):
    first = live_page(**{"live.cfg.steps": 400, "live.cfg.eval_every": 1000, "live.cfg.method": "naive"})
    button(first, "Start fine-tune").click().run()
    second = live_page(**{"live.cfg.method": "l2sp"})
    button(second, "Start fine-tune").click().run()
    assert "place 1 in the queue" in second.info[0].value
    poll_until(first, lambda at: at.get("progress"))
    button(first, "Stop").click().run()
    poll_until(first, finished)
    poll_until(second, finished)
    assert second.success[0].value.startswith("Run completed after 4 steps")
    dirs = {Run.open(p).method: p for p in runs_dir.iterdir() if p.is_dir()}
    assert set(dirs) == {"naive", "l2sp"} and Run.open(dirs["naive"]).status == "stopped"
    assert str(dirs["l2sp"]) in second.success[0].value and str(dirs["naive"]) in first.success[0].value


def test_a_failed_run_says_why(runs_dir):
    missing = runs_dir / "no-such-images"  # inside the app's folders, so the run starts and then fails
    at = live_page(**{"live.cfg.data": f"folder:{missing}"})
    button(at, "Start fine-tune").click().run()
    poll_until(at, finished)
    assert at.error[0].value.startswith("The run failed:") and str(missing) in at.error[0].value


def test_a_run_on_a_folder_outside_the_apps_folders_is_refused_before_it_starts(runs_dir):
    at = live_page(**{"live.cfg.data": "folder:/etc"})
    button(at, "Start fine-tune").click().run()
    assert not at.exception and "outside the folders this app may read" in at.error[0].value
    assert not any(runs_dir.iterdir())


def test_safe_is_offered_only_for_open_clip_resnets(runs_dir):
    from app.live_controls import methods_for

    assert "safe" not in methods_for("efficientnet-lite0") and "safe" in methods_for("open_clip:RN50:openai")
    at = live_page()
    assert "safe" not in at.selectbox(key="live.cfg.method").options


def test_a_link_sets_the_form(runs_dir):
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/live_finetune.py")
    at.query_params.update({"method": "l2sp", "steps": "30", "data": "digits:train", "eval_every": "-1"})
    at.run()
    assert not at.exception
    assert at.selectbox(key="live.cfg.method").value == "l2sp" and at.number_input(key="live.cfg.steps").value == 30
    assert any("Ignored 'eval_every=-1'" in w.value for w in at.warning)
    assert at.query_params["method"] == "l2sp" and at.query_params["steps"] == "30"


def test_a_runs_wise_ft_curve_and_its_measured_forgetting_on_the_page(runs_dir, tiny_run):
    import shutil

    shutil.copytree(tiny_run, runs_dir / "tiny")
    Run.open(runs_dir / "tiny").save_forgetting({"A_LP": 0.9, "delta_LP": {"mean": -0.02}, "otdd": {"mean": 1.5},
                                                 "l2": {"mean": 0.3}})
    at = live_page()
    assert not at.exception
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["tiny", "mean ΔLP"] == pytest.approx(-0.02) and table.loc["tiny", "OT distance"] == 1.5
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("your runs" in spec for spec in charts)  # the trade-off plot marks the measured run
    button(at, "WiSE-FT curve").click().run()
    assert not at.exception
    assert any("WiSE-FT" in c.proto.spec for c in at.get("plotly_chart"))
    at.select_slider(key="live.alpha").set_value(0.5).run()
    assert "At α = 0.5: task accuracy" in " ".join(c.value for c in at.caption)

