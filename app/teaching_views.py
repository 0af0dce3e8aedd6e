"""The Teaching page's figure: one toy layout with an anchor, its pre-trained neighbours, the pull and
push of its loss as arrows, and its proxies (all from `proxyfda.teaching`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from proxyfda.teaching import AnchorForces

CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
PULL, PUSH = "#2e7d32", "#c62828"
ARROWS = 8  # strongest pushes drawn (every pull is drawn)


def toy_figure(layout: np.ndarray, labels: np.ndarray, title: str, anchor: int | None = None,
               neighbours: np.ndarray | None = None, forces: AnchorForces | None = None,
               show_arrows: bool = True, show_proxies: bool = True) -> go.Figure:
    """Points coloured by class; the ``anchor`` (star) with lines to its pre-trained ``neighbours``; with
    ``forces``, arrows for how the anchor's loss moves its neighbours (pull, green) and its most pushed
    non-neighbours (red), and its proxies (diamonds)."""
    fig = go.Figure()
    for c in np.unique(labels):
        mine = labels == c
        fig.add_scatter(x=layout[mine, 0], y=layout[mine, 1], mode="markers", name=f"class {c}",
                        marker=dict(size=8, color=CLASS_COLOURS[int(c) % len(CLASS_COLOURS)]))
    if anchor is not None:
        a = layout[anchor]
        if neighbours is not None:
            xs, ys = [], []
            for j in neighbours:
                xs += [a[0], layout[j, 0], None]
                ys += [a[1], layout[j, 1], None]
            fig.add_scatter(x=xs, y=ys, mode="lines", name="its pre-trained kNN", line=dict(color="#555", width=1))
        if forces is not None:
            if show_proxies and len(forces.proxies):
                half = len(forces.proxies) // 2
                for part, colour, name in ((forces.proxies[:half], PULL, "proxy +"),
                                           (forces.proxies[half:], PUSH, "proxy −")):
                    fig.add_scatter(x=part[:, 0], y=part[:, 1], mode="markers", name=name,
                                    marker=dict(size=12, symbol="diamond-open", color=colour, line=dict(width=2)))
            if show_arrows:
                _arrows(fig, forces, layout)
        fig.add_scatter(x=[a[0]], y=[a[1]], mode="markers", name="anchor",
                        marker=dict(size=18, symbol="star", color="#f9a825", line=dict(color="black", width=1)))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      xaxis=dict(showticklabels=False, zeroline=False),
                      yaxis=dict(showticklabels=False, zeroline=False, scaleanchor="x"))
    return fig


def _arrows(fig: go.Figure, forces: AnchorForces, layout: np.ndarray) -> None:
    pairs = forces.pairs
    moves = np.hypot(pairs.dx, pairs.dy)
    shown = pairs[pairs.positive | pairs.index.isin(moves[~pairs.positive].nlargest(ARROWS).index)]
    span = float(np.ptp(layout, axis=0).max()) or 1.0
    longest = float(np.hypot(shown.dx, shown.dy).max()) if len(shown) else 0.0
    if longest <= 0:
        return
    scale = 0.2 * span / longest  # the strongest arrow is a fifth of the plot
    for row in shown.itertuples():
        fig.add_annotation(x=row.x + scale * row.dx, y=row.y + scale * row.dy, ax=row.x, ay=row.y,
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2,
                           arrowcolor=PULL if row.positive else PUSH, text="")
