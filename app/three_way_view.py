"""The Drift Explorer's three-way tab: two fine-tunes of one pre-trained encoder, side by side."""

from __future__ import annotations

import numpy as np
import streamlit as st

from proxyfda.data import ImageSet
from proxyfda.drift import ThreeWay

from app import session
from app.linked_maps import MapPanel, render_map_row
from app.neighbours import three_way_panel


def three_way_view(both: ThreeWay, images: ImageSet, maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                   color_by: str, show_images: bool) -> None:
    """Summary, three linked maps (pre-trained by class, each fine-tune by its own colouring), the points
    the two fine-tunes treat most differently, and one point's neighbours split by who kept them."""
    summary = both.summary()
    cols = st.columns(len(summary))
    for column, (name, value) in zip(cols, summary.items()):
        column.metric(name if name.startswith("overlap") else f"points where {name}" if name != "tie" else
                      "points where they tie", f"{value:.3f}" if name.startswith("overlap") else f"{value:.0%}")
    focus = session.focus(both.b.n)
    frame = both.frame()
    if focus is None:
        focus = int(frame["id"].iloc[0])
    if maps is not None:
        render_map_row([MapPanel(maps[0], "Pre-trained", both.b.graph_a.indices, both.b.overlap, both.b.l2_drift,
                                 "drift.three.map_a", color_by="class"),
                        MapPanel(maps[1], both.name_b, both.b.graph_b.indices, both.b.overlap, both.b.l2_drift,
                                 "drift.three.map_b"),
                        MapPanel(maps[2], both.name_c, both.c.graph_b.indices, both.c.overlap, both.c.l2_drift,
                                 "drift.three.map_c")], both.b, color_by, focus)
        st.caption("Linked like the maps above: a selection or click in any map marks the same images in all three. "
                   "Rings: the focused point's neighbours in each space.")
    else:
        st.info("The second fine-tune's map is being computed in the background; the tables are ready.")
    st.markdown(f"**Where they differ most** (difference = overlap under {both.name_b} − under {both.name_c})")
    st.dataframe(frame.head(200), hide_index=True, key="drift.three.table", height=260,
                 column_config={"difference": st.column_config.NumberColumn(format="%+.2f")})
    picked = st.number_input("Point (id)", min_value=0, max_value=both.b.n - 1, value=focus,
                             key=f"drift.three.focus.{focus}")
    session.set_focus(picked)
    three_way_panel(both, images, picked, show_images)
