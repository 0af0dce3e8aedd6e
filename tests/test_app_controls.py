"""The two sidebars under AppTest, quickly (no encoder runs, no run trains): every field a link names lands
in its own widget, and the Live sidebar's config carries the method, preset and strength chosen."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT

PAGE = str(ROOT / "pages" / "drift_explorer.py")


#: a link naming every DriftConfig field, each with a value of its own, and the widget that must show it
EVERY_FIELD = {"data": ("text_input", "digits:test"), "n": ("number_input", 120), "k": ("slider", 7),
               "image_size": ("number_input", 48), "pretrained": ("text_input", "efficientnet-lite0:{tmp}/pre.pth"),
               "finetuned": ("text_input", "run:{tmp}/ft"), "compare": ("text_input", "run:{tmp}/cmp"),
               "labels": ("text_input", "{tmp}/labels.txt"), "knn_backend": ("selectbox", "torch"),
               "projection": ("selectbox", "independent"), "seed": ("number_input", 3)}


def test_every_field_of_a_drift_link_lands_in_its_own_widget(tmp_path):
    """No widget shows another field's value; files that are not there are a sentence, not a traceback."""
    at = AppTest.from_file(PAGE, default_timeout=300)
    values = {name: value.format(tmp=tmp_path) if isinstance(value, str) else value
              for name, (_, value) in EVERY_FIELD.items()}
    at.query_params.update({name: str(value) for name, value in values.items()})
    at.run()
    assert not at.exception and not at.warning
    for name, (kind, _) in EVERY_FIELD.items():
        assert getattr(at, kind)(key=f"drift.cfg.{name}").value == values[name], name
    assert "cannot be read" in at.error[0].value or "not a proxyfda run" in at.error[0].value


def test_every_field_of_a_live_link_lands_in_its_own_widget(runs_dir):
    from app.live_controls import LIVE_DEFAULTS

    link = {"base_encoder": "efficientnet-lite0:/x/w.pth", "data": "digits:train", "eval_data": "textiles:all",
            "method": "ldifs", "steps": 40, "eval_every": 5, "image_size": 48, "seed": 2}
    assert set(link) == set(LIVE_DEFAULTS) and all(link[k] != LIVE_DEFAULTS[k] for k in link)
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/live_finetune.py")
    at.query_params.update({name: str(value) for name, value in link.items()})
    at.run()
    assert not at.exception and not at.warning
    kinds = {"method": "selectbox", "steps": "number_input", "eval_every": "number_input",
             "image_size": "number_input", "seed": "number_input"}
    for name, value in link.items():
        assert getattr(at, kinds.get(name, "text_input"))(key=f"live.cfg.{name}").value == value, name


def _sidebar_config() -> None:
    """A page holding only the Live sidebar, keeping the config it describes."""
    import streamlit as st

    from app.live_controls import live_controls

    config, start = live_controls()
    st.session_state["described"] = config.to_dict()
    st.session_state["started"] = start


@pytest.mark.parametrize("method, preset, strength, expected", [
    ("fda", "paper", 0.3, {"preset": "paper", "weight": 0.3}),
    ("proxy-fda", "ours", 0.0, {"preset": "ours", "weight": 0.0}),
    ("l2sp", None, 2.0, {"alpha": 2.0}),
    ("naive", None, None, {}),
])
def test_the_sidebar_describes_the_method_preset_and_strength_chosen(method, preset, strength, expected):
    at = AppTest.from_function(_sidebar_config, default_timeout=60)
    at.session_state["live.cfg.method"] = method
    at.run()
    if preset:
        at.radio(key=f"live.cfg.{method}.preset").set_value(preset)
    if strength is not None:
        at.number_input(key=f"live.cfg.{method}.strength").set_value(strength)
    at.run()
    assert not at.exception
    assert at.session_state["described"]["method"] == method
    assert at.session_state["described"]["reg_options"] == expected


def test_safe_is_offered_for_an_open_clip_resnet_only():
    from app.live_controls import methods_for
    from proxyfda.methods import METHODS

    everything = list(METHODS)
    assert methods_for("open_clip:RN50") == everything and methods_for("  open_clip:RN101:openai ") == everything
    for spec in ("efficientnet-lite0", "open_clip:ViT-B-32", "run:/x/open_clip:RN50", "open_clip:rn50"):
        assert methods_for(spec) == [name for name in everything if name != "safe"], spec


def test_the_sidebar_names_each_method_and_the_symbol_of_its_strength():
    at = AppTest.from_function(_sidebar_config, default_timeout=60)
    at.session_state["live.cfg.method"] = "l2sp"
    at.run()
    method = at.selectbox(key="live.cfg.method")
    assert method.options[0] == "naive — task loss only" and "safe" not in " ".join(method.options)
    assert at.number_input(key="live.cfg.l2sp.strength").label == "Strength α (alpha)"
    assert at.session_state["described"]["reg_options"] == {"alpha": 0.5}  # the method's own strength, untouched
    method.set_value("fda")
    at.run()
    assert at.number_input(key="live.cfg.fda.strength").label == "Strength λ (weight)"
    assert at.session_state["described"]["reg_options"] == {"preset": "ours", "weight": 1.0}


def test_a_live_link_the_sidebar_cannot_take_is_said_and_left_out():
    """A value the config refuses keeps its default, with a sentence; a method the encoder cannot take falls back
    to the table's first."""
    at = AppTest.from_function(_sidebar_config, default_timeout=60)
    at.query_params.update({"steps": "0", "method": "safe"})
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == ["Ignored 'steps=0' in the address: steps must be at least 1, got 0."]
    assert at.session_state["described"]["steps"] == 100
    assert at.session_state["described"]["method"] == "naive"


def test_the_live_sidebar_keeps_a_run_within_a_demonstrations_bounds():
    """A live run is a demonstration on a shared machine: at most 5,000 steps, 512 px, an evaluation at least every
    1,000 steps; nothing below 1 (steps, evaluations), the smallest input size, seed 0 or strength 0."""
    from proxyfda.config import MIN_IMAGE_SIZE

    at = AppTest.from_function(_sidebar_config, default_timeout=60)
    at.session_state["live.cfg.method"] = "fda"
    at.run()
    bounds = {"steps": (1, 5000), "eval_every": (1, 1000), "image_size": (MIN_IMAGE_SIZE, 512), "seed": (0, None),
              "fda.strength": (0, None)}
    for name, (low, high) in bounds.items():
        field = at.number_input(key=f"live.cfg.{name}").proto
        assert (field.min, field.max if field.has_max else None) == (low, high), name
    assert at.session_state["started"] is False
    at.button[0].click().run()  # the sidebar's one button: Start
    assert at.session_state["started"] is True


def _drift_sidebar() -> None:
    from app.drift_controls import drift_controls

    drift_controls()


def test_the_drift_sidebar_keeps_k_and_the_sample_within_their_bounds():
    """k from 1 to 50 neighbours; a sample of 0 (every image) or more; an input size of 0 (each encoder's own) up
    to the largest the project takes."""
    from proxyfda.config import MAX_IMAGE_SIZE

    at = AppTest.from_function(_drift_sidebar, default_timeout=60)
    at.run()
    k, n = at.slider(key="drift.cfg.k").proto, at.number_input(key="drift.cfg.n").proto
    assert (k.min, k.max) == (1, 50) and (n.min, n.has_max) == (0, False)
    size = at.number_input(key="drift.cfg.image_size").proto
    assert (size.has_min, size.min, size.has_max, size.max) == (True, 0, True, MAX_IMAGE_SIZE)
