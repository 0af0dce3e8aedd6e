"""The Drift Explorer page under Streamlit's AppTest, on small real data with a tiny default fine-tune.

Chart selections cannot be fired from AppTest: they are injected through the session keys that
the chart callbacks write (app.session), and the selection parser is tested as a pure function.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.session import FOCUS_KEY, SELECTION_KEY, TAB_KEY
from conftest import ROOT, TINY_FINETUNE
from proxyfda.drift import compute_drift
from test_app_views import _panel_sets, values

PAGE = str(ROOT / "pages" / "drift_explorer.py")
SMALL = {"drift.cfg.data": "digits:test", "drift.cfg.n": 120, "drift.cfg.k": 5, "drift.cfg.image_size": 32}


@pytest.fixture
def tiny_default(monkeypatch, tmp_path):
    """A fresh cache in which the default fine-tuned encoder is a 4-step fine-tune (not yet built)."""
    from proxyfda import runs

    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    monkeypatch.setattr(runs, "DEFAULT_FINETUNE", TINY_FINETUNE)
    return tmp_path


def page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    for key, value in {**SMALL, **state}.items():
        at.session_state[key] = value
    return at.run()


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_first_launch_builds_the_default_with_progress_then_shows_drift(tiny_default):
    from proxyfda.runs import default_run_ready

    assert not default_run_ready()
    at = page()
    assert not at.exception and not at.error
    assert default_run_ready()
    assert [s.label for s in at.status] == ["Default fine-tuned encoder ready"]
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["overlap@5", "Jaccard"] and "trustworthiness" in labels
    assert "random baseline k/(N−1) = 0.0420" in "\n".join(c.value for c in at.caption)  # 5 / 119
    assert "Point " in markdown_text(at) and "Kept" in markdown_text(at)
    assert len(at.dataframe) == 1 and not at.get("download_button")  # only the open tab runs: most drifted
    # the maps are computed in the background; the page says so instead of blocking
    assert any("2D maps" in i.value for i in at.info)
    at.session_state[TAB_KEY] = "Class drift"
    at.run()
    assert len(at.dataframe) == 1 and "drift.class_heatmap" in [c.key for c in at.get("plotly_chart")]
    at.session_state[TAB_KEY] = "Calibration"
    at.run()
    calibration = at.dataframe[0].value
    assert list(calibration["score"])[:2] == ["overlap@k", "Jaccard"] and not at.exception
    shown_overlap = float(next(m.value for m in at.metric if m.label == "overlap@5"))
    assert calibration["value"].iloc[0] == pytest.approx(shown_overlap, abs=5e-4)  # the panel's own score
    at.session_state[TAB_KEY] = "Export"
    at.run()
    assert [b.label for b in at.get("download_button")][:1] == ["Per-point drift (CSV)"]


@pytest.mark.slow  # 18-42 s: fits UMAP (numba compile)
def test_maps_from_cache_and_injected_selection(tiny_default):
    at = page()
    # compute the maps the page asked for, as the background job would
    from proxyfda.data import load_images
    from proxyfda.encoders import create_encoder
    from proxyfda.features import extract_features
    from proxyfda.projection import project_pair

    images = load_images("digits:test", n=120)
    feats = [extract_features(create_encoder(s, image_size=32), images)
             for s in ("efficientnet-lite0", "default-finetuned")]
    maps = project_pair(feats[0], feats[1], method="init", seed=0)
    at.session_state[SELECTION_KEY] = [3, 4, 5]
    at.session_state[FOCUS_KEY] = 7
    at.session_state["drift.show_images"] = False  # neighbour lists as text, so their ids can be read
    at.run()
    assert not at.exception
    charts = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key in ("drift.map_a", "drift.map_b")}
    assert len(charts) == 2
    # the selection reaches both maps; each rings the focused point's neighbours in its own space
    report = compute_drift(feats[0], feats[1], images.labels, images.class_names, 5)
    for key, coords, graph in (("drift.map_a", maps[0], report.graph_a), ("drift.map_b", maps[1], report.graph_b)):
        traces = charts[key]["data"]
        assert traces[0]["selectedpoints"] == [3, 4, 5], key
        assert [t["name"] for t in traces] == ["points", "neighbours", "focus"]
        np.testing.assert_allclose(values(traces[1]["x"]), coords[graph.indices[7], 0], rtol=1e-6, err_msg=key)
    text = markdown_text(at)
    assert "**Point 7**" in text
    assert "**Selection**: 3 points" in text
    # the neighbour panel lists exactly the report's kept / lost / gained for point 7
    shown = _panel_sets(at)
    for name, ids in report.neighbours(7).items():
        assert shown[name] == set(ids.tolist()), name


@pytest.mark.parametrize("state, message", [
    ({"drift.cfg.data": "imagenet"}, "unknown data set"),
    ({"drift.cfg.n": 8, "drift.cfg.k": 10}, "k must be smaller"),
    ({"drift.cfg.finetuned": "run:{cache}/nowhere"}, "not a proxyfda run directory"),
    ({"drift.cfg.data": "folder:/etc"}, "outside the folders this app may read"),
    ({"drift.cfg.finetuned": "run:/etc"}, "outside the folders this app may read"),
    ({"drift.cfg.pretrained": "efficientnet-lite0:{cache}/../../../../../../../../../../etc/passwd"}, "outside the folders"),
    ({"drift.cfg.n": 10**9}, "more than this app embeds"),
    ({"drift.cfg.image_size": 16}, "image size must be between 32 and 1024 px, or 0"),
])
def test_bad_input_is_a_clear_error_not_a_crash(tiny_default, state, message):
    at = page(**{key: value.format(cache=tiny_default) if isinstance(value, str) else value
                 for key, value in state.items()})
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_the_page_says_when_the_set_holds_fewer_images_than_asked(tiny_default, monkeypatch):
    from app import pipeline
    from proxyfda.errors import ProxyFDAError

    def no_features(config, images):  # the notes are shown before any embedding: stop there
        raise ProxyFDAError("stopped by the test")

    monkeypatch.setattr(pipeline, "load_features", no_features)
    at = page(**{"drift.cfg.n": 5000})
    assert not at.exception
    assert any("asked for 5,000 images but digits:test holds only 359" in i.value for i in at.info)


@pytest.mark.slow  # fits UMAP on three snapshots
def test_over_time_tab_plays_a_runs_snapshots(tiny_run):
    """A run as the fine-tuned encoder: the Over-time tab plots its scores per evaluation, lists the points
    that broke first, and (once the background maps are in) shows one animation frame per snapshot."""
    from app.pipeline import projection_jobs

    at = page(**{"drift.cfg.finetuned": f"run:{tiny_run}", TAB_KEY: "Over time"})
    assert not at.exception and not at.error
    assert "drift.time_scores" in [c.key for c in at.get("plotly_chart")]
    assert "60 images of digits:test" in "\n".join(c.value for c in at.caption)
    job = next(job for key, job in projection_jobs().jobs.items() if key[0] == "sequence" and str(tiny_run) in key[1])
    job.result(timeout=600)
    at.run()
    (maps,) = [c for c in at.get("plotly_chart") if c.key == "drift.time_maps"]
    figure = json.loads(maps.proto.spec)
    assert [frame["name"] for frame in figure["frames"]] == ["0", "2", "4"]
    assert [step["label"] for step in figure["layout"]["sliders"][0]["steps"]] == ["0", "2", "4"]


def test_over_time_tab_explains_what_it_needs(tiny_default):
    at = page(**{"drift.cfg.finetuned": "efficientnet-lite0", TAB_KEY: "Over time"})
    assert not at.exception and any("needs a run" in i.value for i in at.info)


def test_the_address_bar_carries_the_config_both_ways(tiny_default):
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.query_params.update({"data": "digits:test", "n": "120", "k": "7", "image_size": "32", "seed": "zero"})
    at.run()
    assert not at.exception and at.slider(key="drift.cfg.k").value == 7
    assert [m.label for m in at.metric][:1] == ["overlap@7"]
    assert "Ignored 'seed=zero' in the address: seed must be a whole number." in [w.value for w in at.warning]
    at.slider(key="drift.cfg.k").set_value(9)
    at.button[0].click().run()  # the form's Compute
    assert at.query_params["k"] == "9" and at.query_params["n"] == "120" and "pretrained" not in at.query_params


def linked_page(**params) -> AppTest:
    """The page opened from a link carrying ``params`` in its address."""
    at = AppTest.from_file(PAGE, default_timeout=300)
    for key, value in SMALL.items():
        at.session_state[key] = value
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def test_a_link_opens_on_its_point_and_the_point_travels_in_the_address(tiny_default):
    at = linked_page(point="17")
    assert not at.exception and "**Point 17**" in markdown_text(at)
    at.number_input(key="drift.focus_input.17").set_value(23).run()
    assert at.query_params["point"] == "23" and "**Point 23**" in markdown_text(at)


def test_a_link_opens_on_its_tab_and_the_open_tab_travels_in_the_address(tiny_default):
    at = linked_page(tab="Class drift")
    assert not at.exception and at.session_state[TAB_KEY] == "Class drift"
    assert at.query_params["tab"] == "Class drift" and at.get("plotly_chart")  # the class heatmap is drawn
    at.session_state[TAB_KEY] = "Most drifted"  # the first tab: the address stays short
    at.run()
    assert "tab" not in at.query_params


def test_three_way_tab_compares_two_fine_tunes(tiny_run, tmp_path):
    """A second run as 'compare': three linked maps, the points they treat most differently, and a point's
    pre-trained neighbours split by which fine-tune kept them."""
    import dataclasses

    from conftest import TINY_FINETUNE
    from proxyfda.training import finetune

    other = tmp_path / "other"
    finetune(dataclasses.replace(TINY_FINETUNE, seed=1, lr=3e-2), other)
    at = page(**{"drift.cfg.finetuned": f"run:{tiny_run}", "drift.cfg.compare": f"run:{other}", TAB_KEY: "Three-way"})
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "overlap tiny" in labels and "overlap other" in labels
    assert "**Kept by both**" in markdown_text(at) and "**Kept by other only**" in markdown_text(at)
    table = next(d for d in at.dataframe if "difference" in d.value.columns).value
    assert len(table) == 120 and set(table.columns) >= {"overlap tiny", "overlap other", "kept by tiny only"}
    from app.pipeline import projection_jobs

    for job in list(projection_jobs().jobs.values()):
        job.result(timeout=600)
    at.run()
    keys = [c.key for c in at.get("plotly_chart")]
    assert {"drift.three.map_a", "drift.three.map_b", "drift.three.map_c"} <= set(keys)


def test_the_sidebar_survives_a_visit_to_another_page(tiny_default):
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    for key, value in {**SMALL, "drift.cfg.k": 7}.items():
        at.session_state[key] = value
    at.run()
    assert [m.label for m in at.metric][:1] == ["overlap@7"]
    at.switch_page("../pages/teaching.py")
    at.run()
    at.switch_page("../pages/drift_explorer.py")
    at.run()
    assert not at.exception and at.slider(key="drift.cfg.k").value == 7 and at.text_input(key="drift.cfg.data").value == "digits:test"
