"""The Live fine-tune page's sidebar: a `FinetuneConfig` built from the method table's own choices.

Widgets own keys under ``live.cfg.*``; the address bar carries them (`app.url_state`). The method is chosen first and the rest follows it: a preset
for the FDA family, the method's strength option at its default, SAFE only for an open_clip ResNet.
"""

from __future__ import annotations

import streamlit as st

from proxyfda.config import MIN_IMAGE_SIZE, FinetuneConfig
from proxyfda.data import list_datasets
from proxyfda.losses.fda import FDA_PRESETS
from proxyfda.methods import METHODS, get_method

from app.url_state import apply_query_params, write_query_params

PREFIX = "live.cfg."
#: a live run is a demonstration: short by default, evaluated often enough to draw curves
LIVE_DEFAULTS = {"base_encoder": "efficientnet-lite0", "data": "mnist:train", "eval_data": "mnist:test",
                 "method": "proxy-fda", "steps": 100, "eval_every": 10, "image_size": 64, "seed": 0}


def _key(name: str) -> str:
    return PREFIX + name


def methods_for(base_encoder: str) -> list[str]:
    """The methods that can fine-tune ``base_encoder``: SAFE tunes an open_clip ResNet's attention pooling."""
    allows_safe = base_encoder.strip().startswith("open_clip:RN")
    return [name for name, method in METHODS.items() if method.trainer != "safe" or allows_safe]


def _check(values: dict) -> None:
    FinetuneConfig(**values)
    get_method(values["method"])


def live_controls() -> tuple[FinetuneConfig, bool]:
    """Render the sidebar; return (the config it describes, whether Start was pressed)."""
    for name, value in LIVE_DEFAULTS.items():
        st.session_state.setdefault(_key(name), value)
    apply_query_params(LIVE_DEFAULTS, PREFIX, check=_check)
    sidebar = st.sidebar
    sidebar.text_input("Base encoder", key=_key("base_encoder"),
                       help="efficientnet-lite0 (bundled) · open_clip:<arch>:<tag|path> · run:<dir> to continue a run")
    choices = methods_for(st.session_state[_key("base_encoder")])
    if st.session_state[_key("method")] not in choices:
        st.session_state[_key("method")] = choices[0]
    sidebar.selectbox("Method", choices, key=_key("method"), format_func=lambda m: f"{m} — {METHODS[m].summary}",
                      help="SAFE appears for open_clip ResNet encoders (it tunes their attention pooling).")
    method = get_method(st.session_state[_key("method")])
    reg_options: dict = {}
    if "preset" in method.options:
        reg_options["preset"] = sidebar.radio(
            "Loss preset", list(FDA_PRESETS), key=_key(f"{method.name}.preset"), horizontal=True,
            help="ours: per-anchor threshold, graded negatives, balanced reduction. paper: the published form "
                 "(fixed bias, 1/(B−1) sum). See docs/METHOD.md.")
    if method.strength:
        default = float(method.options[method.strength])
        symbol = "λ" if method.strength == "weight" else "α"
        reg_options[method.strength] = sidebar.number_input(
            f"Strength {symbol} ({method.strength})", min_value=0.0, value=default, step=default / 2 or 0.1,
            format="%g", key=_key(f"{method.name}.strength"), help="0 turns the regulariser off (naive fine-tuning).")
    with sidebar.expander("Data and schedule", expanded=False):
        st.text_input("Fine-tuning data", key=_key("data"),
                      help=f"Bundled: {', '.join(list_datasets())} with ':train'; or 'folder:/path' (one sub-folder per class).")
        st.text_input("Evaluation data", key=_key("eval_data"), help="Task accuracy and the probe set come from here.")
        st.number_input("Steps", min_value=1, max_value=5000, step=50, key=_key("steps"))
        st.number_input("Evaluate every (steps)", min_value=1, max_value=1000, key=_key("eval_every"),
                        help="Each evaluation adds a point to the curves and a snapshot of the probe's features.")
        st.number_input("Input resolution (px)", min_value=MIN_IMAGE_SIZE, max_value=512, step=16,
                        key=_key("image_size"))
        st.number_input("Seed", min_value=0, step=1, key=_key("seed"))
    values = {name: st.session_state[_key(name)] for name in LIVE_DEFAULTS}
    config = FinetuneConfig(reg_options=reg_options, **values)
    write_query_params(values, LIVE_DEFAULTS, PREFIX)
    start = sidebar.button("Start fine-tune", type="primary", width="stretch")
    return config, start
