"""Linked WebGL maps of the same points: pre-trained | fine-tuned, or a row of any number of spaces.

Every point lives in ONE trace whose ``customdata`` is its row id, so a selection made in either
map names the same rows in the other (plotly's per-trace point indices would scramble when
colours split traces). The figure builder and the selection parser are pure functions; only
`render_linked_maps` touches Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.session import SELECTION_KEY, set_focus, set_selection

COLOR_OPTIONS = ("overlap@k", "class", "L2 drift")
#: points drawn per map unless the user asks for all: at 100k points one map took 3 s to build and 9 MB
#: to send on every redraw, at 20k a fifth of that
MAP_POINTS = 20_000
#: share of `MAP_POINTS` kept for the most drifted points, which a sample must never hide
DRIFTED_SHARE = 0.1
ALL_POINTS_KEY = "drift.all_points"
QUALITATIVE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
               "#9d755d", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"]


def selection_ids(event: Any) -> list[int]:
    """Row ids in a plotly selection event (``st.plotly_chart(on_select=...)`` state), in order, unique."""
    if not event:
        return []
    selection = event.get("selection", event) if isinstance(event, dict) else getattr(event, "selection", {})
    points = selection.get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    ids: list[int] = []
    for point in points:
        custom = point.get("customdata")
        if custom is None:
            continue
        row = int(custom[0] if isinstance(custom, (list, tuple)) else custom)  # one id per point
        if row not in ids:
            ids.append(row)
    return ids


def _marker_colors(color_by: str, labels: np.ndarray, class_names: Sequence[str], overlap: np.ndarray,
                   l2: np.ndarray) -> dict:
    if color_by == "class":
        n = len(class_names)
        palette = [QUALITATIVE[i % len(QUALITATIVE)] for i in range(n)]
        # a stepped colourscale so a single trace can carry categorical colours
        scale = [[edge, palette[min(i, n - 1)]] for i in range(n) for edge in (i / n, (i + 1) / n)]
        return dict(color=labels, colorscale=scale, cmin=-0.5, cmax=n - 0.5,
                    colorbar=dict(tickvals=list(range(n)), ticktext=list(class_names), thickness=10))
    if color_by == "L2 drift" and np.isfinite(l2).any():  # NaN: spaces of different widths have no L2 drift
        return dict(color=l2, colorscale="Magma", reversescale=True, colorbar=dict(title="L2", thickness=10))
    return dict(color=overlap, colorscale="Viridis", cmin=0.0, cmax=1.0, colorbar=dict(title="overlap@k", thickness=10))


def map_sample(overlap: np.ndarray, keep: Sequence[int] = (), budget: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row ids to draw when there are more than ``budget`` (default `MAP_POINTS`) points: every id in
    ``keep`` (the focus, its neighbours, the selection), the ``DRIFTED_SHARE`` most drifted (lowest
    overlap@k), and a uniform random sample (``seed``) for the rest. All ids when they fit."""
    budget = MAP_POINTS if budget is None else budget
    n = len(overlap)
    if n <= budget:
        return np.arange(n)
    drifted = np.argsort(overlap, kind="stable")[: int(budget * DRIFTED_SHARE)]
    chosen = np.zeros(n, dtype=bool)
    chosen[np.asarray(list(keep), dtype=np.int64)] = True
    chosen[drifted] = True
    rest = np.flatnonzero(~chosen)
    extra = max(0, budget - int(chosen.sum()))
    chosen[np.random.default_rng(seed).choice(rest, size=min(extra, len(rest)), replace=False)] = True
    return np.flatnonzero(chosen)


def map_figure(coords: np.ndarray, title: str, *, labels: np.ndarray, class_names: Sequence[str],
               overlap: np.ndarray, l2: np.ndarray, color_by: str = "overlap@k",
               selected: Sequence[int] = (), focus: int | None = None, focus_neighbours: Sequence[int] = (),
               shown: np.ndarray | None = None) -> go.Figure:
    """One map: the points ``shown`` (sorted row ids; default all) in one Scattergl trace (customdata = row
    id), the selection highlighted, and the focused point (star) with its high-dimensional neighbours in
    this space (rings)."""
    shown = np.arange(len(coords)) if shown is None else np.asarray(shown, dtype=np.int64)
    labels, overlap, l2 = labels[shown], overlap[shown], l2[shown]
    hover = [f"id {i} · {class_names[int(c)]}<br>overlap@k {o:.2f} · L2 drift {d:.3f}"
             for i, c, o, d in zip(shown.tolist(), labels, overlap, l2)]
    trace = go.Scattergl(
        x=coords[shown, 0], y=coords[shown, 1], mode="markers", name="points",
        # a plain list: numpy arrays travel as typed-array blobs and come back from selections as dicts
        customdata=shown.tolist(),
        text=hover, hovertemplate="%{text}<extra></extra>",
        marker=dict(size=5 if len(shown) <= MAP_POINTS else 3, opacity=0.85,
                    **_marker_colors(color_by, labels, class_names, overlap, l2)),
    )
    if len(selected):
        wanted = np.asarray(list(selected), dtype=np.int64)
        at = np.searchsorted(shown, wanted)
        drawn = (at < len(shown)) & (shown[np.minimum(at, len(shown) - 1)] == wanted)
        trace.selectedpoints = at[drawn].tolist()  # positions in this trace of the selected row ids
        trace.selected = dict(marker=dict(opacity=1.0, size=7))
        trace.unselected = dict(marker=dict(opacity=0.12))
    fig = go.Figure(trace)
    if focus is not None:
        ring = list(focus_neighbours)
        fig.add_trace(go.Scattergl(x=coords[ring, 0], y=coords[ring, 1], mode="markers", name="neighbours",
                                   marker=dict(size=11, color="rgba(0,0,0,0)", line=dict(width=2, color="#d62728")),
                                   hoverinfo="skip"))
        fig.add_trace(go.Scattergl(x=[coords[focus, 0]], y=[coords[focus, 1]], mode="markers", name="focus",
                                   marker=dict(size=16, symbol="star", color="#d62728",
                                               line=dict(width=1, color="white")),
                                   hoverinfo="skip"))
    fig.update_layout(title=dict(text=title, x=0.0, font=dict(size=15)), height=460, showlegend=False,
                      margin=dict(l=8, r=8, t=36, b=8), dragmode="lasso", uirevision="drift-maps")
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x")
    return fig


def _on_select(chart_key: str) -> None:
    ids = selection_ids(st.session_state.get(chart_key))
    set_selection(ids)
    if len(ids) == 1:
        set_focus(ids[0])


def render_linked_maps(map_a: np.ndarray, map_b: np.ndarray, report, color_by: str, focus: int | None) -> None:
    """Draw both maps side by side; a box/lasso/click in either selects the same rows in both."""
    render_map_row([MapPanel(map_a, "Pre-trained", report.graph_a.indices, report.overlap, report.l2_drift, "drift.map_a"),
                    MapPanel(map_b, "Fine-tuned", report.graph_b.indices, report.overlap, report.l2_drift, "drift.map_b")],
                   report, color_by, focus)


@dataclass(frozen=True)
class MapPanel:
    """One map in a row of linked maps: its 2-D coordinates and title, the kNN graph whose neighbours ring
    the focused point, the per-point overlap and L2 drift its colours show, and its widget key."""

    coords: np.ndarray
    title: str
    neighbours: np.ndarray
    overlap: np.ndarray
    l2: np.ndarray
    key: str
    color_by: str | None = None  # this map's own colouring (default: the row's)


def render_map_row(panels: Sequence[MapPanel], report, color_by: str, focus: int | None) -> None:
    """Linked maps side by side: a box/lasso/click in any one selects the same rows in all."""
    selected = st.session_state.get(SELECTION_KEY, [])
    shown = _shown_points(panels, selected, focus)
    common = dict(labels=report.labels, class_names=report.class_names, selected=selected, focus=focus, shown=shown)
    for column, panel in zip(st.columns(len(panels)), panels):
        with column:
            ring = panel.neighbours[focus] if focus is not None else ()
            fig = map_figure(panel.coords, panel.title, overlap=panel.overlap, l2=panel.l2, focus_neighbours=ring,
                             color_by=panel.color_by or color_by, **common)
            st.plotly_chart(fig, key=panel.key, on_select=lambda key=panel.key: _on_select(key),
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})


def _shown_points(panels: Sequence[MapPanel], selected: Sequence[int], focus: int | None) -> np.ndarray | None:
    """The row ids every map of the row draws (the same in each, so they stay linked): all of them, or past
    `MAP_POINTS` a stated sample unless the user ticks "Draw every point"."""
    n = len(panels[0].coords)
    if n <= MAP_POINTS:
        return None
    if st.checkbox(f"Draw every point ({n:,}; each redraw then takes seconds)", key=ALL_POINTS_KEY):
        return None
    keep = [*selected, *([focus] if focus is not None else [])]
    if focus is not None:
        keep += [int(i) for panel in panels for i in panel.neighbours[focus]]
    overlap = np.min([panel.overlap for panel in panels], axis=0)
    shown = map_sample(overlap, keep)
    st.caption(f"The maps draw {len(shown):,} of {n:,} points: the {int(MAP_POINTS * DRIFTED_SHARE):,} most drifted, "
               "the focused point with its neighbours and the selection, and a random sample of the rest. "
               "A box or lasso selects among the points drawn; every score counts all points.")
    return shown
