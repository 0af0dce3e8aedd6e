"""The Drift Explorer's components on the hand-built drift case of test_drift.py, under AppTest.

A tiny script draws the linked maps, the neighbour panel and the export buttons for a report whose
answer is known (no encoder, no UMAP: seconds). Selections are injected through app.session's keys,
as the chart callbacks would write them; the download buttons' bytes are captured from Streamlit's
in-memory media storage.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app.session import FOCUS_KEY, SELECTION_KEY
from proxyfda.drift import compute_drift
from test_drift import CLASS_NAMES, FT, LABELS, PRE, X_A, X_B


def views_script():
    """Runs inside AppTest: the components of pages/drift_explorer.py over the hand-built report."""
    import numpy as np

    from app import session
    from app.linked_maps import render_linked_maps
    from app.neighbours import neighbour_panel
    from app.report_views import export_buttons
    from proxyfda.data import ImageSet
    from proxyfda.drift import compute_drift
    from test_drift import CLASS_NAMES, LABELS, X_A, X_B

    report = compute_drift(X_A, X_B, LABELS, CLASS_NAMES, 2, backend="torch")
    images = ImageSet(spec="hand", labels=LABELS, class_names=CLASS_NAMES,
                      pixels=np.zeros((len(LABELS), 8, 8, 3), dtype=np.uint8))
    focus = session.focus(report.n)
    render_linked_maps(X_A[:, :2], X_B[:, :2], report, "overlap@k", focus)
    if focus is not None:
        neighbour_panel(report, images, focus, show_images=False)
    export_buttons(report)


@pytest.fixture(scope="module")
def report():
    return compute_drift(X_A, X_B, LABELS, CLASS_NAMES, 2, backend="torch")


@pytest.fixture
def downloads(monkeypatch):
    """url -> bytes of every file a script run puts into Streamlit's media storage."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[self.get_url(file_id)] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return files


def run_views(**state) -> AppTest:
    at = AppTest.from_function(views_script, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def values(v) -> np.ndarray:
    """A plotly JSON array: a plain list, or a typed-array blob {"dtype", "bdata"(, "shape")}."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def map_specs(at: AppTest) -> dict[str, dict]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def test_selection_reaches_both_maps(report):
    at = run_views(**{SELECTION_KEY: [2, 3, 5]})
    specs = map_specs(at)
    assert set(specs) == {"drift.map_a", "drift.map_b"}
    for key, coords in (("drift.map_a", X_A), ("drift.map_b", X_B)):
        points = specs[key]["data"][0]
        assert points["selectedpoints"] == [2, 3, 5], key
        assert points["customdata"] == list(range(9))
        np.testing.assert_allclose(values(points["x"]), coords[:, 0])
        np.testing.assert_allclose(values(points["marker"]["color"]), report.overlap)
        assert len(specs[key]["data"]) == 1  # nothing focused: no neighbour rings, no star


def test_no_selection_highlights_nothing():
    specs = map_specs(run_views())
    assert all("selectedpoints" not in s["data"][0] for s in specs.values())


@pytest.mark.parametrize("focus", [3, 0])  # point 0 is a focus like any other
def test_focus_rings_each_maps_own_neighbours(focus):
    """The focused point's rings are its pre-trained neighbours on the left, fine-tuned on the right."""
    specs = map_specs(run_views(**{SELECTION_KEY: [focus], FOCUS_KEY: focus}))
    for key, coords, graph in (("drift.map_a", X_A, PRE), ("drift.map_b", X_B, FT)):
        names = [t.get("name") for t in specs[key]["data"]]
        assert names == ["points", "neighbours", "focus"]
        rings = specs[key]["data"][1]
        ringed = {int(np.flatnonzero(np.isclose(coords[:, 0], x) & np.isclose(coords[:, 1], y))[0])
                  for x, y in zip(values(rings["x"]), values(rings["y"]))}
        assert ringed == graph[focus], key
        star = specs[key]["data"][2]
        assert (values(star["x"])[0], values(star["y"])[0]) == pytest.approx(tuple(coords[focus, :2]))
        assert specs[key]["data"][0]["selectedpoints"] == [focus]


def _panel_sets(at: AppTest) -> dict[str, set[int]]:
    """Neighbour ids listed under Kept / Lost / Gained (thumbnails off: 'id (id · class · sim), ...')."""
    sections: dict[str, set[int]] = {}
    current = None
    for block in at.main.children.values():
        for element in _walk(block):
            text = getattr(element, "value", None)
            if not isinstance(text, str):
                continue
            header = re.match(r"\*\*(Kept|Lost|Gained)\*\* \((\d+)\)", text)
            if header:
                current = header.group(1).lower()
                sections[current] = set()
                sections[current + "_count"] = {int(header.group(2))}
            elif current is not None and element.type in ("markdown", "caption"):
                sections[current] |= {int(i) for i in re.findall(r"(?:^|; )(\d+) ·", text)}
                current = None
    return sections


def _walk(node):
    children = getattr(node, "children", None)
    if children is None:
        yield node
        return
    for child in children.values():
        yield from _walk(child)


@pytest.mark.parametrize("focus", [0, 3, 4, 7])
def test_neighbour_panel_lists_the_reports_kept_lost_gained(report, focus):
    at = run_views(**{FOCUS_KEY: focus})
    split = {name: set(ids.tolist()) for name, ids in report.neighbours(focus).items()}
    assert split == {"kept": PRE[focus] & FT[focus], "lost": PRE[focus] - FT[focus], "gained": FT[focus] - PRE[focus]}
    shown = _panel_sets(at)
    for name in ("kept", "lost", "gained"):
        assert shown[name] == split[name], name
        assert shown[name + "_count"] == {len(split[name])}
    captions = "\n".join(str(getattr(e, "value", "")) for block in at.main.children.values() for e in _walk(block))
    for name, graph in (("kept", report.graph_a), ("lost", report.graph_a), ("gained", report.graph_b)):
        sims = dict(zip(graph.indices[focus].tolist(), graph.similarities[focus].tolist()))  # the space it is in
        for j in split[name]:
            assert f"{j} · {CLASS_NAMES[LABELS[j]]} · {sims[j]:.2f}" in captions, (name, j)
    text = "\n".join(m.value for m in at.markdown)
    assert f"**Point {focus}** · class **{CLASS_NAMES[LABELS[focus]]}**" in text
    assert f"overlap@2 = **{report.overlap[focus]:.2f}**" in text


def test_export_downloads_equal_the_points_frame(report, downloads):
    at = run_views()
    buttons = {b.label: b.proto.url for b in at.get("download_button")}
    assert set(buttons) == {"Per-point drift (CSV)", "Per-point drift (parquet)", "Class drift (CSV)"}
    frame = report.points_frame()

    parquet = pd.read_parquet(io.BytesIO(downloads[buttons["Per-point drift (parquet)"]]))
    assert list(parquet.columns) == list(frame.columns)
    for column in ("id", "label", "class", "overlap_at_k", "jaccard", "l2_drift"):
        np.testing.assert_array_equal(parquet[column].to_numpy(), frame[column].to_numpy(), err_msg=column)
    for column in ("neighbours_pretrained", "neighbours_finetuned"):
        assert [list(r) for r in parquet[column]] == [list(r) for r in frame[column]], column

    csv = pd.read_csv(io.BytesIO(downloads[buttons["Per-point drift (CSV)"]]))
    assert list(csv.columns) == list(frame.columns)
    assert csv["id"].tolist() == list(range(9)) and csv["class"].tolist() == [CLASS_NAMES[c] for c in LABELS]
    np.testing.assert_allclose(csv["overlap_at_k"], report.overlap)
    np.testing.assert_allclose(csv["jaccard"], report.jaccard)
    np.testing.assert_allclose(csv["l2_drift"], report.l2_drift, rtol=1e-12)
    assert [set(map(int, s.split())) for s in csv["neighbours_pretrained"]] == [PRE[i] for i in range(9)]
    assert [set(map(int, s.split())) for s in csv["neighbours_finetuned"]] == [FT[i] for i in range(9)]

    classes = pd.read_csv(io.BytesIO(downloads[buttons["Class drift (CSV)"]]))
    pd.testing.assert_frame_equal(classes, report.class_table, check_dtype=False)


def callback_script():
    """Runs inside AppTest: a chart selection event (injected as session state under 'fake.map') goes
    through the maps' own on_select callback before the views are drawn, as a click in either map would."""
    import streamlit as st

    from app.linked_maps import _on_select
    from test_app_views import views_script

    if "fake.map" in st.session_state:
        _on_select("fake.map")
    views_script()


def run_callback(event) -> AppTest:
    at = AppTest.from_function(callback_script, default_timeout=60)
    at.session_state["fake.map"] = event
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _event(*ids):
    return {"selection": {"points": [{"curve_number": 0, "point_index": i, "customdata": i} for i in ids]}}


def test_a_lasso_in_one_map_selects_the_same_rows_in_both():
    at = run_callback(_event(5, 2, 8))
    assert at.session_state[SELECTION_KEY] == [5, 2, 8]
    assert FOCUS_KEY not in at.session_state
    for key, spec in map_specs(at).items():
        assert spec["data"][0]["selectedpoints"] == [5, 2, 8], key


def test_a_click_on_one_point_selects_and_focuses_it(report):
    at = run_callback(_event(4))
    assert at.session_state[SELECTION_KEY] == [4] and at.session_state[FOCUS_KEY] == 4
    specs = map_specs(at)
    assert [t["name"] for t in specs["drift.map_b"]["data"]] == ["points", "neighbours", "focus"]
    shown = _panel_sets(at)
    assert shown["kept"] == {5} and shown["lost"] == {3} and shown["gained"] == {2}


def test_the_tradeoff_figure_gives_each_method_its_own_colour_and_naive_a_star():
    from app.live_views import tradeoff_figure
    from app.routes import TRADEOFF_RESULTS
    from proxyfda.forgetting import frontier

    rows = json.loads(TRADEOFF_RESULTS.read_text())["runs"]
    fig = tradeoff_figure(rows, [{"run": "mine", "A_LP": 0.97, "delta_LP": -0.01}])
    lines = [t for t in fig.data if t.showlegend is not False and t.name != "your runs"]
    assert [t.name for t in lines] == ["naive", *[x for x in dict.fromkeys(r["label"] for r in rows) if x != "naive"]]
    assert len({t.marker.color for t in lines}) == len(lines)  # ten methods and presets, ten colours
    assert lines[0].marker.symbol == "star" and lines[0].mode == "markers"
    for trace in lines:
        np.testing.assert_allclose(trace.x, frontier(rows, trace.name)[0])
    assert fig.data[-1].name == "your runs" and list(fig.data[-1].y) == [-1.0]


def test_the_over_time_chart_plots_each_score_and_the_share_broken_per_step():
    """One line per logged score (named with k, absent when never logged) over the steps, and a bar per step for
    the share of points whose overlap@k with step 0 fell below 0.5, worked out by hand."""
    from app.timeline_view import scores_figure
    from proxyfda.data import ImageSet
    from proxyfda.drift import Timeline

    overlap = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [0.4, 0.6, 1.0, 0.2, 0.8], [0.0, 0.4, 0.2, 0.6, 0.5]])
    scores = pd.DataFrame({"step": [0, 10, 20], "overlap@k": [1.0, 0.6, 0.34], "CKNNA": [1.0, 0.7, 0.5],
                           "linear CKA": [1.0, 0.9, 0.8], "task accuracy": [np.nan] * 3})
    images = ImageSet("rows:5", np.zeros(5, int), ["one"])
    fig = scores_figure(Timeline([0, 10, 20], overlap, scores, images, 5, []))
    lines = {trace.name: list(trace.y) for trace in fig.data if trace.type == "scatter"}
    assert lines == {"overlap@5": [1.0, 0.6, 0.34], "CKNNA": [1.0, 0.7, 0.5], "linear CKA": [1.0, 0.9, 0.8]}
    (bar,) = [trace for trace in fig.data if trace.type == "bar"]
    assert list(bar.x) == [0, 10, 20] and list(bar.y) == pytest.approx([0.0, 0.4, 0.6])


def _selection_script():
    from app.neighbours import selection_grid
    from proxyfda.data import ImageSet
    from proxyfda.drift import compute_drift
    from test_drift import CLASS_NAMES, LABELS, X_A, X_B

    report = compute_drift(X_A, X_B, LABELS, CLASS_NAMES, 2, backend="torch")
    images = ImageSet(spec="hand", labels=LABELS, class_names=CLASS_NAMES)
    selection_grid(images, report, list(range(len(LABELS))), show_images=False, limit=3)


def test_a_large_selection_shows_its_most_drifted_points_first(report):
    """Past its limit, a selection shows the points of lowest overlap, lowest first (ties in id order)."""
    at = AppTest.from_function(_selection_script, default_timeout=60).run()
    assert not at.exception
    lowest = np.argsort(report.overlap, kind="stable")[:3]
    assert "; ".join(f"{i} · {report.overlap[i]:.1f}" for i in lowest) in [m.value for m in at.markdown]
    assert "(showing the 3 most drifted)" in at.markdown[0].value
