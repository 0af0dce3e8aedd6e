"""Views of a DriftReport: the global metrics panel, the most-drifted table, class drift, export."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from proxyfda.config import DriftConfig
from proxyfda.data import ImageSet
from proxyfda.drift import NULL_PERMUTATIONS, DriftReport, calibrate
from proxyfda.metrics import class_composition
from proxyfda.report_html import SCORE_INFO, calibration_display, report_file_name, report_html, score_label

from app.session import set_focus

def metrics_panel(report: DriftReport) -> None:
    m = report.metrics
    omitted = m.get("omitted", {})
    # two rows of five, so every label reads in full: neighbourhoods first, then geometry (SCORE_INFO's order)
    neighbourhood, geometry = st.columns(5), st.columns(5)
    for column, (key, (_, what)) in zip(neighbourhood + geometry, SCORE_INFO.items()):
        column.metric(score_label(key, report.k), f"{m[key]:.3f}" if key in m else "n/a", help=omitted.get(key, what))
    neighbourhood[0].caption(f"random baseline k/(N−1) = {m['overlap_at_k_random_baseline']:.4f}")
    st.caption(f"N = {m['n']:,} images · k = {m['k']} · kNN backend: {m['knn_backend']}")
    if "knn_note" in m:  # an approximate graph is always announced, with its measured recall
        st.info(m["knn_note"], icon=":material/speed:")
    if omitted:
        st.caption("Not computed: " + "; ".join(omitted.values()) + ".")


#: rows per page of the most-drifted table
PAGE_ROWS = 50


def most_drifted_table(report: DriftReport) -> None:
    """All points, most drifted first, a page of `PAGE_ROWS` at a time (at 100k points a full table would
    send megabytes on every rerun); selecting a row inspects that point."""
    pages = -(-report.n // PAGE_ROWS)
    left, right = st.columns([1, 3])
    page = left.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=1, key="drift.page")
    start = (int(page) - 1) * PAGE_ROWS
    table = report.most_drifted(PAGE_ROWS, start=start)
    right.caption(f"Points {start + 1:,}–{start + len(table):,} of {report.n:,}, lowest overlap@k first. "
                  "Select a row to inspect its neighbours.")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key=f"drift.most_drifted.{page}", height=320,
                         column_config={"overlap_at_k": st.column_config.ProgressColumn(
                             f"overlap@{report.k}", min_value=0.0, max_value=1.0, format="%.2f")})
    rows = event.selection.rows if event is not None else []
    if rows:
        set_focus(int(table.iloc[rows[0]]["id"]))


def class_drift_view(report: DriftReport) -> None:
    st.dataframe(report.class_table, hide_index=True)
    n_classes = len(report.class_names)
    before = class_composition(report.graph_a.indices, report.labels, n_classes)
    after = class_composition(report.graph_b.indices, report.labels, n_classes)
    change = after - before
    limit = float(np.abs(change).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=change, x=report.class_names, y=report.class_names, colorscale="RdBu",
                               zmid=0, zmin=-limit, zmax=limit, colorbar=dict(title="Δ share")))
    fig.update_layout(title="Change in neighbour-class composition (fine-tuned − pre-trained)", height=420,
                      margin=dict(l=8, r=8, t=40, b=8), xaxis_title="neighbour's class", yaxis_title="point's class")
    fig.update_yaxes(autorange="reversed")
    st.plotly_chart(fig, key="drift.class_heatmap")


def export_frame(report: DriftReport) -> pd.DataFrame:
    """Per-point drift with neighbour lists as space-separated ids (CSV-friendly)."""
    frame = report.points_frame()
    for column in ("neighbours_pretrained", "neighbours_finetuned"):
        frame[column] = [" ".join(map(str, row)) for row in frame[column]]
    return frame


def export_buttons(report: DriftReport) -> None:
    csv = export_frame(report).to_csv(index=False).encode()
    buffer = io.BytesIO()
    report.points_frame().to_parquet(buffer, index=False)
    a, b, c = st.columns(3)
    a.download_button("Per-point drift (CSV)", csv, "points.csv", "text/csv")
    b.download_button("Per-point drift (parquet)", buffer.getvalue(), "points.parquet", "application/octet-stream")
    c.download_button("Class drift (CSV)", report.class_table.to_csv(index=False).encode(), "classes.csv", "text/csv")


def html_report_button(report: DriftReport, images: ImageSet, maps: tuple[np.ndarray, np.ndarray] | None,
                       x_a: np.ndarray, x_b: np.ndarray, key: tuple, config: DriftConfig) -> None:
    """The analysis on screen as one self-contained HTML file, the same as ``proxyfda report`` writes:
    built only when clicked (with the page's report, maps and cached calibration)."""
    label, name = "Drift report (HTML)", report_file_name(config)
    what = ("One file with the scores and their nulls, both maps, the most drifted images with their neighbours, "
            "class drift and the specs and versions behind them. It opens offline and can be sent as it is.")
    if maps is None:
        st.download_button(label, b"", name, "text/html", disabled=True, help=what)
        st.caption("The HTML report includes both maps: it can be downloaded once they are computed.")
        return

    def build() -> str:
        return report_html(report, images, maps, _calibration(report, x_a, x_b, key + (report.k,)), config)

    st.download_button(label, build, name, "text/html", help=what, icon=":material/download:")


@st.cache_data(show_spinner=False, max_entries=4)
def _calibration(_report: DriftReport, _x_a: np.ndarray, _x_b: np.ndarray, key: tuple) -> pd.DataFrame:
    return calibrate(_report, _x_a, _x_b)


def calibration_view(report: DriftReport, x_a: np.ndarray, x_b: np.ndarray, key: tuple) -> None:
    """Each global score beside its value when the pairing of images is broken, and a bootstrap interval."""
    st.caption(f"Raw scores rise with dimension and k alone. Here each is compared with its value over "
               f"{NULL_PERMUTATIONS} random re-pairings of the fine-tuned rows (the null: unrelated spaces of the same "
               "shape), and per-point means get a 95 % bootstrap interval over images. A score near its null "
               "preserved nothing.")
    with st.spinner(f"Re-pairing the images {NULL_PERMUTATIONS} times…"):
        table = _calibration(report, x_a, x_b, key + (report.k,))
    st.dataframe(calibration_display(table), hide_index=True,
                 column_config={"value": st.column_config.NumberColumn(format="%.3f")})
