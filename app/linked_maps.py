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


def map_figure(coords: np.ndarray, title: str, *, labels: np.ndarray, class_names: Sequence[str],
               overlap: np.ndarray, l2: np.ndarray, color_by: str = "overlap@k",
               selected: Sequence[int] = (), focus: int | None = None, focus_neighbours: Sequence[int] = ()) -> go.Figure:
    """One map: all points in one Scattergl trace (customdata = row id), the selection highlighted,
    and the focused point (star) with its high-dimensional neighbours in this space (rings)."""
    hover = [f"id {i} · {class_names[int(c)]}<br>overlap@k {o:.2f} · L2 drift {d:.3f}"
             for i, (c, o, d) in enumerate(zip(labels, overlap, l2))]
    trace = go.Scattergl(
        x=coords[:, 0], y=coords[:, 1], mode="markers", name="points",
        # a plain list: numpy arrays travel as typed-array blobs and come back from selections as dicts
        customdata=list(range(len(coords))),
        text=hover, hovertemplate="%{text}<extra></extra>",
        marker=dict(size=5, opacity=0.85, **_marker_colors(color_by, labels, class_names, overlap, l2)),
    )
    if len(selected):
        trace.selectedpoints = list(selected)  # point index == row id in this single trace
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
    common = dict(labels=report.labels, class_names=report.class_names, selected=selected, focus=focus)
    for column, panel in zip(st.columns(len(panels)), panels):
        with column:
            ring = panel.neighbours[focus] if focus is not None else ()
            fig = map_figure(panel.coords, panel.title, overlap=panel.overlap, l2=panel.l2, focus_neighbours=ring,
                             color_by=panel.color_by or color_by, **common)
            st.plotly_chart(fig, key=panel.key, on_select=lambda key=panel.key: _on_select(key),
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
