"""The Drift Explorer's sidebar: a form that yields a DriftConfig, plus display switches.

Widgets own keys under ``drift.cfg.*``; their first values come from `DriftConfig()` (or from
whatever a test put in session state before the first run). The URL carries the config: query
parameters named like `DriftConfig` fields (``?finetuned=run:/path&k=20``, see `app.url_state`).
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from proxyfda.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, DriftConfig
from proxyfda.data import list_datasets
from proxyfda.errors import ProxyFDAError
from proxyfda.knn import available_backends
from proxyfda.projection import PROJECTION_METHODS

from app.linked_maps import COLOR_OPTIONS
from app.url_state import apply_query_params, write_query_params

PREFIX = "drift.cfg."


def _key(name: str) -> str:
    return PREFIX + name


FIELDS = {field.name: field for field in dataclasses.fields(DriftConfig)}
DEFAULTS = {name: field.default for name, field in FIELDS.items()}


def _init_defaults() -> None:
    for name, value in DEFAULTS.items():
        st.session_state.setdefault(_key(name), value)
    st.session_state.setdefault("drift.color_by", COLOR_OPTIONS[0])
    st.session_state.setdefault("drift.show_images", True)


def drift_controls() -> tuple[DriftConfig, str, bool]:
    """Render the sidebar; return (config, colour-by choice, whether to show thumbnails)."""
    _init_defaults()
    apply_query_params(DEFAULTS, PREFIX, check=lambda values: DriftConfig(**values))
    sidebar = st.sidebar
    with sidebar.form("drift.form", border=False):
        st.text_input("Data", key=_key("data"),
                      help=f"Bundled: {', '.join(list_datasets())} (add ':train' or ':test'), "
                           "or 'folder:/path/to/images' with one sub-folder per class.")
        st.number_input("Images (class-balanced sample; 0 = all)", min_value=0, step=500, key=_key("n"))
        st.slider("k (neighbours)", min_value=1, max_value=50, key=_key("k"))
        st.text_input("Pre-trained encoder", key=_key("pretrained"),
                      help="efficientnet-lite0 · efficientnet-lite0:/path.pth · open_clip:<arch>:<tag|path|none> · run:<dir>")
        st.text_input("Fine-tuned encoder", key=_key("finetuned"),
                      help="'default-finetuned' is EfficientNet-Lite0 fine-tuned on MNIST by proxyfda; "
                           "or any spec as above, e.g. run:<dir> from `proxyfda finetune`.")
        st.text_input("Compare with (optional)", key=_key("compare"), placeholder="a second fine-tuned encoder",
                      help="A second fine-tune of the same pre-trained encoder, e.g. run:<dir> of a naive run beside "
                           "a Proxy-FDA one: the Three-way tab shows what each kept that the other lost.")
        st.number_input("Input resolution (px; 0 = each encoder's own)", min_value=0, max_value=MAX_IMAGE_SIZE,
                        step=16, key=_key("image_size"), help=f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px, or 0")
        with st.expander("Advanced"):
            st.selectbox("kNN backend", ["auto", *available_backends()], key=_key("knn_backend"))
            st.selectbox("Map alignment", PROJECTION_METHODS, key=_key("projection"),
                         help="init: fit the pre-trained map, start the fine-tuned one from it, Procrustes-align. "
                              "independent: two fits, Procrustes. aligned: AlignedUMAP (slowest).")
            st.number_input("Sampling seed", min_value=0, step=1, key=_key("seed"))
        st.form_submit_button("Compute", type="primary", width="stretch")
    sidebar.divider()
    sidebar.radio("Colour points by", COLOR_OPTIONS, key="drift.color_by", horizontal=True)
    sidebar.toggle("Show thumbnails", key="drift.show_images", help="Turn off for large selections.")
    values = {name: st.session_state[_key(name)] for name in FIELDS}
    try:
        config = DriftConfig(**values)
    except ProxyFDAError as exc:  # a value the widgets allow but the config refuses, e.g. a 16 px input
        st.error(str(exc))
        st.stop()
    write_query_params(values, DEFAULTS, PREFIX)
    return config, st.session_state["drift.color_by"], st.session_state["drift.show_images"]
