"""The app's session-state helpers called directly (Streamlit's bare mode keeps a session state of its own), for
what AppTest cannot drive: a radio's on_change callback, a selection being cleared, the address bar's helpers
on their own, and the small library pieces only a distributed run or a page uses."""

from __future__ import annotations

import warnings

import pytest
import streamlit as st

from app import drift_controls as dc
from app import session


@pytest.fixture(autouse=True)
def fresh_state():
    """An empty bare-mode session state (its "missing ScriptRunContext" notices silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st.session_state.clear()
        yield st.session_state
        st.session_state.clear()


def test_switching_to_embedding_files_compares_every_row_with_no_second_fine_tune(fresh_state):
    fresh_state.update({dc.SOURCE_KEY: dc.FILES_SOURCE, "drift.cfg.n": 500, "drift.cfg.compare": "run:/x/naive",
                        "drift.cfg.data": "digits:test", "drift.cfg.pretrained": "vectors:/x/a.npy"})
    dc._source_changed()
    assert (fresh_state["drift.cfg.n"], fresh_state["drift.cfg.compare"]) == (0, "")
    assert fresh_state["drift.cfg.data"] == "digits:test"  # what the files form shows is left alone


def test_switching_back_to_images_restores_the_encoders_forms_defaults(fresh_state):
    fresh_state.update({dc.SOURCE_KEY: dc.IMAGES_SOURCE, "drift.cfg.pretrained": "vectors:/x/a.npy",
                        "drift.cfg.finetuned": "vectors:/x/b.npy", "drift.cfg.data": "rows:10", "drift.cfg.n": 0,
                        "drift.cfg.labels": "/x/labels.txt", "drift.cfg.k": 7})
    dc._source_changed()
    for name in ("pretrained", "finetuned", "data", "n", "labels"):
        assert fresh_state[f"drift.cfg.{name}"] == dc.DEFAULTS[name], name
    assert fresh_state["drift.cfg.k"] == 7 and fresh_state[dc.VEC_SYNCED] == dc.DEFAULTS["pretrained"]


def test_selection_and_focus_keep_only_rows_that_exist(fresh_state):
    session.set_selection([4, 1, 9])
    assert session.selection(5) == [4, 1] and session.selection(10) == [4, 1, 9]
    session.clear_selection()
    assert session.selection(10) == [] and fresh_state[session.SELECTION_KEY] == []
    assert session.focus(10) is None
    fresh_state[session.FOCUS_KEY] = 9
    assert session.focus(10) == 9 and session.focus(9) is None and session.focus(0) is None
