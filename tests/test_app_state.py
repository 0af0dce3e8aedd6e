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
    session.set_selection([-1, 0, 4, 5])  # the first and the last row count; neither end past them does
    assert session.selection(5) == [0, 4]
    session.clear_selection()
    assert session.selection(10) == [] and fresh_state[session.SELECTION_KEY] == []
    assert session.focus(10) is None
    fresh_state[session.FOCUS_KEY] = 9
    assert session.focus(10) == 9 and session.focus(9) is None and session.focus(0) is None


# ---- the address bar: app.url_state --------------------------------------------------------------------------

DEFAULTS = {"k": 10, "lr": 0.001, "data": "digits:test"}


@pytest.fixture
def address(fresh_state):
    st.query_params.clear()
    for name, value in DEFAULTS.items():
        fresh_state[f"f.{name}"] = value
    yield st.query_params
    st.query_params.clear()


def test_a_link_sets_each_field_as_its_defaults_type_once(address, fresh_state):
    from app.url_state import apply_query_params

    address.update({"k": "7", "lr": "0.5", "data": "textiles:all", "other": "ignored"})
    apply_query_params(DEFAULTS, "f.")
    assert (fresh_state["f.k"], fresh_state["f.lr"], fresh_state["f.data"]) == (7, 0.5, "textiles:all")
    assert "f.other" not in fresh_state
    fresh_state["f.k"] = 3  # the user moves the slider; the same address must not take it back
    apply_query_params(DEFAULTS, "f.")
    assert fresh_state["f.k"] == 3
    address["k"] = "9"  # a new link does
    apply_query_params(DEFAULTS, "f.")
    assert fresh_state["f.k"] == 9


def test_a_value_the_form_would_refuse_is_left_out(address, fresh_state):
    from app.url_state import apply_query_params
    from proxyfda.errors import ProxyFDAError

    def check(values: dict) -> None:
        if values["k"] > 50:
            raise ProxyFDAError("k must be at most 50")

    address.update({"k": "500", "lr": "fast", "data": "mnist:test"})
    apply_query_params(DEFAULTS, "f.", check=check)
    assert (fresh_state["f.k"], fresh_state["f.lr"], fresh_state["f.data"]) == (10, 0.001, "mnist:test")


def test_each_value_left_out_is_named_with_its_reason(address, fresh_state, monkeypatch):
    """A sentence per value left out: what the address said, and why (the type it must have, or the form's own
    refusal)."""
    import app.url_state as url_state
    from proxyfda.errors import ProxyFDAError

    said = []
    monkeypatch.setattr(url_state.st, "warning", said.append)

    def check(values: dict) -> None:
        if values["data"] == "nowhere:x":
            raise ProxyFDAError("unknown image set 'nowhere'")

    defaults = {**DEFAULTS, "on": True}
    fresh_state["f.on"] = True
    address.update({"k": "seven", "lr": "fast", "data": "nowhere:x", "on": "maybe"})
    url_state.apply_query_params(defaults, "f.", check=check)
    assert said == ["Ignored 'k=seven' in the address: k must be a whole number.",
                    "Ignored 'lr=fast' in the address: lr must be a number.",
                    "Ignored 'data=nowhere:x' in the address: unknown image set 'nowhere'.",
                    "Ignored 'on=maybe' in the address: on must be true or false."]
    assert fresh_state["f.on"] is True


@pytest.mark.parametrize("written, value", [("False", False), ("True", True), ("no", False), ("yes", True),
                                            ("0", False), ("1", True), ("TRUE", True), ("false", False)])
def test_a_flag_reads_back_what_the_form_wrote(address, fresh_state, written, value):
    """write_query_params writes str(flag); reading it back must give the flag, not bool("False") = True."""
    from app.url_state import apply_query_params, write_query_params

    defaults = {"on": not value}
    fresh_state["f.on"] = not value
    write_query_params({"on": value}, defaults, "f.")
    assert dict(address) == {"on": str(value)}
    address["on"] = written
    fresh_state["f.query_applied"] = {}
    apply_query_params(defaults, "f.")
    assert fresh_state["f.on"] is value


def test_the_form_writes_only_what_differs_from_its_defaults(address, fresh_state):
    from app.url_state import write_query_params

    address.update({"k": "7", "lr": "0.5"})
    write_query_params({"k": 10, "lr": 0.25, "data": "mnist:test"}, DEFAULTS, "f.")
    assert dict(address) == {"lr": "0.25", "data": "mnist:test"}
    assert fresh_state["f.query_applied"] == {"lr": "0.25", "data": "mnist:test"}


def test_the_address_the_form_wrote_is_not_a_new_link(address, fresh_state):
    """A page applies the address first, then draws its widgets, then writes them back. What it wrote must not
    be applied on the next run: the user may have moved a widget since, and that move would be undone."""
    from app.url_state import apply_query_params, write_query_params

    address.update({"k": "7"})
    apply_query_params(DEFAULTS, "f.")
    fresh_state["f.k"] = 3  # moved; the page writes it back at the end of the run
    write_query_params({"k": 3, "lr": 0.001, "data": "digits:test"}, DEFAULTS, "f.")
    assert dict(address) == {"k": "3"}
    fresh_state["f.k"] = 5  # moved again before the next run
    apply_query_params(DEFAULTS, "f.")
    assert fresh_state["f.k"] == 5


def test_the_open_tab_and_the_focused_point_travel_in_the_address(address, fresh_state):
    labels = ["Neighbours", "Class drift", "Over time"]
    address.update({"tab": "Over time", "point": "17"})
    session.tab_from_url(labels)
    session.focus_from_url()
    assert fresh_state[session.TAB_KEY] == "Over time" and fresh_state[session.FOCUS_KEY] == 17
    fresh_state[session.TAB_KEY] = "Neighbours"  # the first tab: the address drops it
    session.tab_to_url(labels)
    assert "tab" not in address
    fresh_state[session.TAB_KEY] = "Class drift"
    session.tab_to_url(labels)
    assert address["tab"] == "Class drift"
    session.set_focus(23)
    assert address["point"] == "23" and fresh_state[session.FOCUS_KEY] == 23
    address.update({"tab": "Nowhere", "point": "x"})  # names nothing: nothing changes
    session.tab_from_url(labels)
    session.focus_from_url()
    assert fresh_state[session.TAB_KEY] == "Class drift" and fresh_state[session.FOCUS_KEY] == 23


def test_an_address_is_applied_once_so_a_later_click_wins(address, fresh_state):
    """The tab and point a link names are taken on the first run that sees them; a user who then opens another
    tab or point keeps it on every later run with the same address; a new address is taken again."""
    labels = ["Neighbours", "Class drift", "Over time"]

    def a_run() -> tuple[str, int]:
        session.tab_from_url(labels)
        session.focus_from_url()
        return fresh_state[session.TAB_KEY], fresh_state[session.FOCUS_KEY]

    address.update({"tab": "Over time", "point": "17"})
    assert a_run() == ("Over time", 17)
    fresh_state[session.TAB_KEY], fresh_state[session.FOCUS_KEY] = "Neighbours", 3  # the user's clicks
    assert a_run() == ("Neighbours", 3) and a_run() == ("Neighbours", 3)
    address.update({"tab": "Class drift", "point": "8"})
    assert a_run() == ("Class drift", 8)


def test_kept_page_values_are_written_back_and_return_from_their_copy(monkeypatch):
    """A plain dictionary stands in for the session: every kept page's value gets a copy under `SHADOW`, a value
    Streamlit dropped comes back from its copy, a newer value wins over an older copy, and buttons, other keys
    and non-string keys are left alone."""
    from types import SimpleNamespace

    state = {"drift.cfg.k": 20, "kept:drift.cfg.k": 10, "teach.lr": 0.1, "teach.step10": True,
             "kept:live.cfg.steps": 50, "other": 1, 3: "x"}
    monkeypatch.setattr(session, "st", SimpleNamespace(session_state=state))
    session.keep_widget_values()
    assert state == {"drift.cfg.k": 20, "kept:drift.cfg.k": 20, "teach.lr": 0.1, "kept:teach.lr": 0.1,
                     "teach.step10": True, "live.cfg.steps": 50, "kept:live.cfg.steps": 50, "other": 1, 3: "x"}
