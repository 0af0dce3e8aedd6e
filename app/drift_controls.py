"""The Drift Explorer's sidebar: a form that yields a DriftConfig, plus display switches.

Widgets own keys under ``drift.cfg.*``; their first values come from `DriftConfig()` (or from
whatever a test put in session state before the first run). The URL carries the config: query
parameters named like `DriftConfig` fields (``?finetuned=run:/path&k=20``) set the form when they
change (a shared link, or another page opening a run here), and the form writes its values back, so the
address bar always reproduces the view.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from proxyfda.config import DriftConfig
from proxyfda.data import list_datasets
from proxyfda.errors import ProxyFDAError
from proxyfda.knn import available_backends
from proxyfda.projection import PROJECTION_METHODS

from app.linked_maps import COLOR_OPTIONS

PREFIX = "drift.cfg."


def _key(name: str) -> str:
    return PREFIX + name


FIELDS = {field.name: field for field in dataclasses.fields(DriftConfig)}
APPLIED_KEY = "drift.query_applied"  # the query parameters last copied into the form


def _init_defaults() -> None:
    for field in FIELDS.values():
        st.session_state.setdefault(_key(field.name), field.default)
    st.session_state.setdefault("drift.color_by", COLOR_OPTIONS[0])
    st.session_state.setdefault("drift.show_images", True)


def _apply_query_params() -> None:
    """Copy the URL's config into the form when the URL has changed since it was last copied; a value
    that does not parse is reported and left out."""
    given = {name: st.query_params[name] for name in FIELDS if name in st.query_params}
    if not given or given == st.session_state.get(APPLIED_KEY):
        return
    st.session_state[APPLIED_KEY] = given
    for name, raw in given.items():
        kind = type(FIELDS[name].default)
        current = {field: st.session_state[_key(field)] for field in FIELDS}
        try:
            value = kind(raw)
            DriftConfig(**{**current, name: value})
        except (ValueError, ProxyFDAError) as exc:
            reason = exc if isinstance(exc, ProxyFDAError) else f"{name} must be a {kind.__name__}"
            st.warning(f"Ignored '{name}={raw}' in the address: {reason}.")
            continue
        st.session_state[_key(name)] = value


def _write_query_params(config: DriftConfig) -> None:
    """The address bar: every field that differs from the default, so a link reproduces this view."""
    values = {name: str(value) for name, value in config.to_dict().items() if value != FIELDS[name].default}
    for name in FIELDS:
        if name in st.query_params and name not in values:
            del st.query_params[name]
    st.query_params.update(values)
    st.session_state[APPLIED_KEY] = values


def drift_controls() -> tuple[DriftConfig, str, bool]:
    """Render the sidebar; return (config, colour-by choice, whether to show thumbnails)."""
    _init_defaults()
    _apply_query_params()
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
        st.number_input("Input resolution (px; 0 = each encoder's own)", min_value=0, step=16, key=_key("image_size"))
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
    config = DriftConfig(**values)
    _write_query_params(config)
    return config, st.session_state["drift.color_by"], st.session_state["drift.show_images"]
