"""Session-state keys the Drift Explorer's components share, and the only code that writes them (the
focused point also travels in the address bar as ``?point=ID``).

Chart selections cannot be fired from AppTest, so everything a selection changes goes through
these setters, which tests call directly.
"""

from __future__ import annotations

from typing import Sequence

import streamlit as st

SELECTION_KEY = "drift.selection"  # row ids selected on either map (list[int])
FOCUS_KEY = "drift.focus"  # the row whose neighbours are shown (int)
TAB_KEY = "drift.tab"  # the open tab under the maps (its label)


def set_selection(ids: Sequence[int]) -> None:
    st.session_state[SELECTION_KEY] = [int(i) for i in ids]


POINT_PARAM = "point"  # the focused row in the address bar, so a link opens on the same point
POINT_APPLIED_KEY = "drift.point_applied"  # the address's point last taken (or written): a new one wins


def set_focus(row: int) -> None:
    st.session_state[FOCUS_KEY] = int(row)
    st.query_params[POINT_PARAM] = st.session_state[POINT_APPLIED_KEY] = str(int(row))


def focus_from_url() -> None:
    """Take the focused row from the address bar when the link names one (once per new value)."""
    raw = st.query_params.get(POINT_PARAM)
    if raw is None or raw == st.session_state.get(POINT_APPLIED_KEY):
        return
    st.session_state[POINT_APPLIED_KEY] = raw
    if raw.isdigit():
        st.session_state[FOCUS_KEY] = int(raw)


TAB_PARAM = "tab"  # the open tab under the maps in the address bar (omitted for the first)
TAB_APPLIED_KEY = "drift.tab_applied"


def tab_from_url(labels: list[str]) -> None:
    """Open the tab the address names (``?tab=Class drift``), once per new value; call before the tabs."""
    raw = st.query_params.get(TAB_PARAM)
    if raw is None or raw == st.session_state.get(TAB_APPLIED_KEY):
        return
    st.session_state[TAB_APPLIED_KEY] = raw
    if raw in labels:
        st.session_state[TAB_KEY] = raw


def tab_to_url(labels: list[str]) -> None:
    """Put the open tab in the address, so a link reopens it; call after the tabs."""
    current = st.session_state.get(TAB_KEY)
    if current in labels and current != labels[0]:
        st.query_params[TAB_PARAM] = st.session_state[TAB_APPLIED_KEY] = current
    elif TAB_PARAM in st.query_params:
        del st.query_params[TAB_PARAM]


def clear_selection() -> None:
    st.session_state[SELECTION_KEY] = []


def focus(n_points: int) -> int | None:
    """The focused row, or None when nothing valid is focused (e.g. after the data set changed)."""
    row = st.session_state.get(FOCUS_KEY)
    return row if row is not None and 0 <= row < n_points else None


def selection(n_points: int) -> list[int]:
    return [i for i in st.session_state.get(SELECTION_KEY, []) if 0 <= i < n_points]



#: the pages whose widget values outlive a visit to another page, by key prefix, with their buttons'
#: keys (a button's value cannot be written back)
KEPT_PAGES = {"drift.cfg.": (), "drift.vec.": (), "drift.source": (), "drift.color_by": (), "drift.show_images": (),
              "live.cfg.": (),
              "teach.": ("teach.step10", "teach.step100", "teach.reset"), "debug.": ("debug.compare",)}


#: where `keep_widget_values` keeps a copy of each kept value, out of reach of Streamlit's widget clean-up
SHADOW = "kept:"


def keep_widget_values() -> None:
    """Keep those pages' widget values while another page is shown. Streamlit forgets the state of
    widgets that were not drawn in a run; writing each value back on every run (the router calls this)
    stops that. A copy under a plain key (`SHADOW`) brings a value back when Streamlit drops it anyway:
    a ``run_every`` fragment (the Drift Explorer's map poller) that fires after the user left its page
    evicts the written-back values (streamlit/streamlit#10805)."""
    state = st.session_state
    for prefix, buttons in KEPT_PAGES.items():
        for shadow in [k for k in state if isinstance(k, str) and k.startswith(SHADOW + prefix)]:
            key = shadow.removeprefix(SHADOW)
            if key not in state:
                state[key] = state[shadow]
        for key in [k for k in state if isinstance(k, str) and k.startswith(prefix) and k not in buttons]:
            state[key] = state[SHADOW + key] = state[key]
