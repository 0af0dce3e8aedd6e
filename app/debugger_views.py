"""Views of a `proxyfda.proxy_debug.Inspection`: an anchor's pairs and proxies with thumbnails, the
proxies on the batch's map, and their batch-level distributions. Everything drawn comes from the
loss module's records held by the inspection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from proxyfda.proxy_debug import Inspection

THUMB = 56
PROXY_COLOURS = {"proxy +": "#2e7d32", "proxy −": "#c62828"}


def _thumb_row(found: Inspection, ids: list[int], captions: list[str], width: int = THUMB) -> None:
    if ids:
        st.image([found.batch.images.thumbnail(int(i)) for i in ids], caption=captions, width=width)
    else:
        st.caption("none")


def anchor_view(found: Inspection, anchor: int, negatives: int = 8) -> None:
    """The anchor, its pre-trained positives and hardest negatives with their weights, its loss terms."""
    images = found.batch.images
    terms = found.anchor_terms(anchor)
    pairs = found.pairs(anchor)
    head, info = st.columns([1, 5])
    with head:
        st.image(images.thumbnail(anchor, size=96), width=96)
    with info:
        st.markdown(f"**Anchor {anchor}** · class **{images.class_of(anchor)}** · threshold cosine "
                    f"**{terms['threshold']:.3f}** · its loss **{terms['loss']:.3f}** = pull {terms['loss_pos']:.3f} "
                    f"+ push {terms['loss_neg']:.3f}")
        st.caption("Positives are its K nearest images in the pre-trained space: the loss pulls their fine-tuned "
                   "cosine above the threshold, with weight ŵ (their pre-trained cosine). Negatives are pushed "
                   "below it, the hardest (most similar) shown here. Captions: image · class · weight · "
                   "fine-tuned cosine.")
    positive, negative = pairs[pairs.positive], pairs[~pairs.positive].head(negatives)
    left, right = st.columns(2)
    for column, frame, title in ((left, positive, f"**Positives** ({len(positive)})"),
                                 (right, negative, f"**Hardest negatives** (top {len(negative)} of {(~pairs.positive).sum()})")):
        with column:
            st.markdown(title)
            _thumb_row(found, frame.image.tolist(),
                       [f"{i} · {c} · {w:+.2f} · {s:.2f}" for i, c, w, s in
                        zip(frame.image, frame["class"], frame.weight, frame.ft_cos)])


def proxy_view(found: Inspection, anchor: int, members: int = 4) -> None:
    """The anchor's proxies: what each pools (member thumbnails with pooling weights), its weight in the
    loss, and its estimated vs actual pre-trained similarity."""
    table = found.proxies(anchor, members)
    st.caption(f"Each proxy is a convex combination of the anchor's positives (or negatives): the thumbnails are "
               f"the {members} real images it pools most, captioned with their pooling weights. The generator "
               f"estimates each proxy's pre-trained similarity to the anchor; 'actual' pools the pre-trained "
               f"features with the same weights. Generator: {found.generator}.")
    for side in ("positive", "negative"):
        st.markdown(f"**Proxy {side}s**")
        for row in table[table.side == side].itertuples():
            text, thumbs = st.columns([2, 5])
            with text:
                st.markdown(f"proxy {row.proxy} · weight {row.weight:+.2f}  \nsimilarity estimated "
                            f"{row.sim_estimated:.3f} / actual {row.sim_actual:.3f}  \nfine-tuned cosine "
                            f"{row.ft_cos:.3f} · nearest real at {row.nn_dist:.3f}")
            with thumbs:
                _thumb_row(found, row.members, [f"{m} · {w:.2f}" for m, w in zip(row.members, row.member_weights)],
                           width=44)


def proxy_map(found: Inspection, anchor: int) -> go.Figure:
    """Real features and all proxies on one linear map of the fine-tuned space; the anchor's own
    proxies, positives and the anchor itself drawn on top."""
    points = found.map_points()
    proxies = points[points.kind != "real"]
    fig = px.scatter(proxies, x="x", y="y", color="kind", color_discrete_map=PROXY_COLOURS, opacity=0.3,
                     hover_data={"anchor": True, "slot": True, "class": True, "x": False, "y": False})
    real = points[points.kind == "real"]
    fig.add_scatter(x=real.x, y=real.y, mode="markers", name="real images", customdata=real[["anchor", "class"]],
                    hovertemplate="image %{customdata[0]} · class %{customdata[1]}<extra></extra>",
                    marker=dict(size=8, color="#37474f", line=dict(color="white", width=1)))
    mine = points[(points.anchor == anchor) & (points.kind != "real")]
    positives = found.pairs(anchor)
    positives = points.iloc[positives.image[positives.positive].to_numpy()]
    fig.add_scatter(x=positives.x, y=positives.y, mode="markers", name="its positives",
                    marker=dict(size=10, color="rgba(0,0,0,0)", line=dict(color="#2e7d32", width=2)))
    fig.add_scatter(x=mine.x, y=mine.y, mode="markers", name="its proxies",
                    marker=dict(size=11, symbol="diamond", color=[PROXY_COLOURS[k] for k in mine.kind],
                                line=dict(color="black", width=1)))
    me = points.iloc[[anchor]]
    fig.add_scatter(x=me.x, y=me.y, mode="markers", name="anchor",
                    marker=dict(size=16, symbol="star", color="#f9a825", line=dict(color="black", width=1)))
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="",
                      title="Batch features and proxies (first two principal axes of the fine-tuned batch)")
    return fig


def distributions(found: Inspection) -> go.Figure:
    """Distance of each proxy to its nearest real feature, positive and negative proxies apart."""
    r, p = found.records, found.n_proxies
    nn = r["proxy_nn_dist"]
    frame = pd.DataFrame({"distance to nearest real feature": np.concatenate([nn[:, :p].ravel(), nn[:, p:].ravel()]),
                          "side": ["positive"] * nn[:, :p].size + ["negative"] * nn[:, p:].size})
    fig = px.histogram(frame, x="distance to nearest real feature", color="side", barmode="overlay", nbins=40,
                       color_discrete_map={"positive": "#2e7d32", "negative": "#c62828"})
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10),
                      title="Proxy to nearest real feature (chordal distance on the unit sphere)")
    return fig


def similarity_scatter(found: Inspection, anchor: int) -> go.Figure:
    """Every proxy's estimated vs actual pre-trained similarity; the anchor's highlighted."""
    r, p = found.records, found.n_proxies
    est, act = r["proxy_sim_estimated"], r["proxy_sim_actual"]
    b = est.shape[0]
    frame = pd.DataFrame({"actual": act.ravel(), "estimated": est.ravel(),
                          "side": np.tile(np.where(np.arange(2 * p) < p, "positive", "negative"), b),
                          "anchor": np.repeat(np.arange(b), 2 * p)})
    fig = px.scatter(frame, x="actual", y="estimated", color="side", opacity=0.4,
                     color_discrete_map={"positive": "#2e7d32", "negative": "#c62828"})
    mine = frame[frame.anchor == anchor]
    fig.add_scatter(x=mine.actual, y=mine.estimated, mode="markers", name=f"anchor {anchor}",
                    marker=dict(size=11, symbol="diamond", color="#f9a825", line=dict(color="black", width=1)))
    low, high = float(min(frame.actual.min(), frame.estimated.min())), float(max(frame.actual.max(), frame.estimated.max()))
    fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="estimated = actual",
                    line=dict(color="grey", dash="dot"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10),
                      title="Proxy-to-anchor similarity: estimated vs actual")
    return fig


def effects_chart(table: pd.DataFrame, option: str) -> go.Figure:
    """How the proxies' health and the FDA loss move with one option."""
    long = table.melt(id_vars=option, value_vars=["proxy_nn_dist", "proxy_diversity", "proxy_sim_error", "fda"],
                      var_name="measure", value_name="value")
    fig = px.line(long, x=option, y="value", facet_col="measure", markers=True, facet_col_spacing=0.06)
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10), showlegend=False)
    return fig
