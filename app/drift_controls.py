"""The Drift Explorer's sidebar: a form that yields a DriftConfig, plus display switches.

Widgets own keys under ``drift.cfg.*``; their first values come from `DriftConfig()` (or from
whatever a test put in session state before the first run). The URL carries the config: query
parameters named like `DriftConfig` fields (``?finetuned=run:/path&k=20``, see `app.url_state`).

The source is images and two encoders, or two embedding files the user already has
(``drift.vec.*``): those become ``vectors:`` encoder specs and the data their images, or ``rows:N``
without them, so the address carries them like any other config.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from proxyfda.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, DriftConfig
from proxyfda.data import ROWS_PREFIX, list_datasets
from proxyfda.encoders import VECTORS_PREFIX
from proxyfda.errors import ProxyFDAError
from proxyfda.knn import available_backends
from proxyfda.projection import PROJECTION_METHODS
from proxyfda.vectors import LABEL_SUFFIXES, VECTOR_SUFFIXES, row_count

from app import guard
from app.linked_maps import COLOR_OPTIONS
from app.url_state import apply_query_params, write_query_params

PREFIX = "drift.cfg."
SOURCE_KEY = "drift.source"
IMAGES_SOURCE, FILES_SOURCE = "Images and encoders", "Embedding files"
#: the embedding-files form: file A, file B, the images they embed (optional); and the pre-trained spec
#: they were last written to, so a new one from the address is told apart
VEC_A, VEC_B, VEC_IMAGES, VEC_SYNCED = "drift.vec.a", "drift.vec.b", "drift.vec.images", "drift.vec.synced"
FILES_HELP = (f"One vector per point, the same points in the same order in both: {', '.join(VECTOR_SUFFIXES)} "
              "([N, d] arrays, or a table with a column of vectors; name it as FILE#COLUMN when there are several). "
              "The widths may differ.")


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
    _source_from_config()
    sidebar = st.sidebar
    sidebar.radio("Source", (IMAGES_SOURCE, FILES_SOURCE), key=SOURCE_KEY, horizontal=True, on_change=_source_changed,
                  help="Embed images with two encoders here, or compare two embedding files you already have.")
    files = st.session_state[SOURCE_KEY] == FILES_SOURCE
    with sidebar.form("drift.form", border=False):
        if files:
            _files_form()
        else:
            _encoders_form()
        st.form_submit_button("Compute", type="primary", width="stretch")
    sidebar.divider()
    sidebar.radio("Colour points by", COLOR_OPTIONS, key="drift.color_by", horizontal=True)
    sidebar.toggle("Show thumbnails", key="drift.show_images", help="Turn off for large selections.")
    values = {name: st.session_state[_key(name)] for name in FIELDS}
    try:
        if files:
            values.update(_files_values())
        config = DriftConfig(**values)
    except ProxyFDAError as exc:  # a value the widgets allow but the config refuses, e.g. a 16 px input
        st.error(str(exc))
        st.stop()
    if files:  # the config's own fields carry the files (their widgets are not drawn): the address gets them
        for name in ("pretrained", "finetuned", "data", "compare"):
            st.session_state[_key(name)] = values[name]
    st.session_state[VEC_SYNCED] = values["pretrained"]
    write_query_params(values, DEFAULTS, PREFIX)
    return config, st.session_state["drift.color_by"], st.session_state["drift.show_images"]


def _source_from_config() -> None:
    """Show the embedding-files form when the address (or a test) names ``vectors:`` encoders that the form
    has not written itself; and the encoders form when the address names others."""
    state = st.session_state
    spec = state[_key("pretrained")]
    state.setdefault(SOURCE_KEY, IMAGES_SOURCE)
    if spec == state.get(VEC_SYNCED):
        return
    if spec.startswith(f"{VECTORS_PREFIX}:"):
        state[SOURCE_KEY] = FILES_SOURCE
        state[VEC_A] = spec.removeprefix(f"{VECTORS_PREFIX}:")
        state[VEC_B] = state[_key("finetuned")].removeprefix(f"{VECTORS_PREFIX}:")
        data = state[_key("data")]
        state[VEC_IMAGES] = "" if data.startswith(f"{ROWS_PREFIX}:") else data
    elif VEC_SYNCED in state:  # not on a first run, where a test may have chosen the files itself
        state[SOURCE_KEY] = IMAGES_SOURCE


def _source_changed() -> None:
    """Switching source: embedding files start with every row and no second fine-tune; back to images, the
    encoders, data and sample size are the defaults again."""
    state = st.session_state
    if state[SOURCE_KEY] == FILES_SOURCE:
        state[_key("n")], state[_key("compare")] = 0, ""
    else:
        for name in ("pretrained", "finetuned", "data", "n", "labels"):
            state[_key(name)] = DEFAULTS[name]
        state[VEC_SYNCED] = DEFAULTS["pretrained"]


def _files_form() -> None:
    """The embedding-files form: two files, an optional labels file and image set, the sample, k."""
    st.text_input("Embeddings A (pre-trained)", key=VEC_A, placeholder="/path/to/before.npy", help=FILES_HELP)
    st.text_input("Embeddings B (fine-tuned)", key=VEC_B, placeholder="/path/to/after.parquet#embedding",
                  help=FILES_HELP)
    st.text_input("Labels file (optional)", key=_key("labels"), placeholder="no labels: one class",
                  help=f"One class name or id per row, in the same order: {', '.join(LABEL_SUFFIXES)}.")
    st.text_input("Images (optional)", key=VEC_IMAGES, placeholder="no images: ids instead of thumbnails",
                  help="A data spec of the images the rows embed, in the same order (e.g. folder:/path or "
                       "fashion-mnist:test): their thumbnails, and their classes unless a labels file is given.")
    st.number_input("Points (class-balanced sample; 0 = all rows)", min_value=0, step=500, key=_key("n"))
    st.slider("k (neighbours)", min_value=1, max_value=50, key=_key("k"))
    _advanced()


def _files_values() -> dict:
    """The config fields the embedding-files form sets; stops the page with a note until both files are given."""
    state = st.session_state
    a, b, images = (state.get(key, "").strip() for key in (VEC_A, VEC_B, VEC_IMAGES))
    if not a or not b:
        st.info("Give the two embedding files in the sidebar (the same points in the same order, one row each), "
                "then press Compute. " + FILES_HELP)
        st.stop()
    pretrained, finetuned = f"{VECTORS_PREFIX}:{a}", f"{VECTORS_PREFIX}:{b}"
    if not images:
        guard.check_specs(encoders=[pretrained])  # before the file is read
        images = f"{ROWS_PREFIX}:{row_count(a)}"
    return {"pretrained": pretrained, "finetuned": finetuned, "data": images, "compare": ""}


def _encoders_form() -> None:
    """The images-and-encoders form: data, sample, k, both encoders, a second fine-tune, the resolution."""
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
    _advanced(labels=True)


def _advanced(labels: bool = False) -> None:
    """The Advanced expander of both forms (the encoders form also takes a labels file there)."""
    with st.expander("Advanced"):
        if labels:
            st.text_input("Labels file (optional)", key=_key("labels"),
                          help="Classes for the images from a file instead of the data's own: one name or id per "
                               f"image of the whole set, in its order ({', '.join(LABEL_SUFFIXES)}).")
        st.selectbox("kNN backend", ["auto", *available_backends(approximate=True)], key=_key("knn_backend"))
        st.selectbox("Map alignment", PROJECTION_METHODS, key=_key("projection"),
                     help="init: fit the pre-trained map, start the fine-tuned one from it, Procrustes-align. "
                          "independent: two fits, Procrustes. aligned: AlignedUMAP (slowest).")
        st.number_input("Sampling seed", min_value=0, step=1, key=_key("seed"))
