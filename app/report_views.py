"""Views of a DriftReport: the global metrics panel, the most-drifted table, class drift, export."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from proxyfda.drift import DriftReport, calibrate
from proxyfda.metrics import class_composition

from app.session import set_focus

METRIC_HELP = {
    "overlap": "Mean over points of |N_pre(i) ∩ N_ft(i)| / k: the share of each point's k nearest neighbours "
               "(cosine, full feature space) that survive fine-tuning. Not Jaccard.",
    "jaccard": "Mean of |A ∩ B| / |A ∪ B| of the two neighbour sets.",
    "trustworthiness": "Are the fine-tuned space's neighbourhoods also neighbourhoods before? 1 = no intruders.",
    "continuity": "Are the pre-trained neighbourhoods kept after fine-tuning? 1 = nothing torn apart.",
    "order": "Mean over points of the longest common subsequence of the two ranked neighbour lists, over k: "
             "like overlap@k, but the shared neighbours must also keep their order.",
    "cka": "Linear CKA between the two feature matrices: 1 = the same geometry up to rotation and scale.",
    "cknna": "CKNNA (Huh et al. 2024): unbiased CKA of the cosine kernels restricted to pairs that are k-nearest "
             "neighbours in both spaces. Local geometry: 1 = the same, about 0 = unrelated.",
    "procrustes": "Residual after the best rotation, scale and translation (scipy's definition): 0 = identical shape.",
    "l2": "Mean distance between each image's L2-normalised pre-trained and fine-tuned features.",
}


def metrics_panel(report: DriftReport) -> None:
    m = report.metrics
    baseline = m["overlap_at_k_random_baseline"]
    # two rows of five, so every label reads in full: neighbourhoods first, then geometry
    neighbourhood, geometry = st.columns(5), st.columns(5)
    neighbourhood[0].metric(f"overlap@{report.k}", f"{m['overlap_at_k_mean']:.3f}", help=METRIC_HELP["overlap"])
    neighbourhood[0].caption(f"random baseline k/(N−1) = {baseline:.4f}")
    shown = (("Jaccard", "jaccard_mean", "jaccard"), ("order agreement", "order_agreement_mean", "order"),
             ("trustworthiness", "trustworthiness", "trustworthiness"), ("continuity", "continuity", "continuity"),
             ("linear CKA", "linear_cka", "cka"), ("CKNNA", "cknna", "cknna"),
             ("Procrustes disparity", "procrustes_disparity", "procrustes"), ("mean L2 drift", "mean_l2_drift", "l2"))
    omitted = m.get("omitted", {})
    for column, (label, key, help_key) in zip(neighbourhood[1:] + geometry, shown):
        column.metric(label, f"{m[key]:.3f}" if key in m else "n/a", help=omitted.get(key, METRIC_HELP[help_key]))
    st.caption(f"N = {m['n']} images · k = {m['k']} · kNN backend: {m['knn_backend']}")
    if omitted:
        st.caption("Not computed: " + "; ".join(omitted.values()) + ".")


def most_drifted_table(report: DriftReport, top: int = 50) -> None:
    table = report.most_drifted(top)
    st.caption("Lowest overlap@k first. Select a row to inspect its neighbours.")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="drift.most_drifted", height=320,
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


CALIBRATION_LABELS = {"overlap_at_k_mean": "overlap@k", "jaccard_mean": "Jaccard",
                      "order_agreement_mean": "order agreement", "cknna": "CKNNA", "linear_cka": "linear CKA",
                      "mean_l2_drift": "mean L2 drift"}


@st.cache_data(show_spinner=False, max_entries=4)
def _calibration(_report: DriftReport, _x_a: np.ndarray, _x_b: np.ndarray, key: tuple) -> pd.DataFrame:
    return calibrate(_report, _x_a, _x_b)


def calibration_view(report: DriftReport, x_a: np.ndarray, x_b: np.ndarray, key: tuple) -> None:
    """Each global score beside its value when the pairing of images is broken, and a bootstrap interval."""
    st.caption("Raw scores rise with dimension and k alone. Here each is compared with its value over 20 random "
               "re-pairings of the fine-tuned rows (the null: unrelated spaces of the same shape), and per-point "
               "means get a 95 % bootstrap interval over images. A score near its null preserved nothing.")
    with st.spinner("Re-pairing the images 20 times…"):
        table = _calibration(report, x_a, x_b, key + (report.k,))
    shown = pd.DataFrame({
        "score": [CALIBRATION_LABELS[name] for name in table["score"]],
        "value": table["value"],
        "null (mean ± sd)": [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["null_mean"], table["null_sd"])],
        "95 % interval": ["—" if np.isnan(lo) else f"{lo:.3f} – {hi:.3f}"
                          for lo, hi in zip(table["ci_low"], table["ci_high"])],
    })
    st.dataframe(shown, hide_index=True, column_config={"value": st.column_config.NumberColumn(format="%.3f")})
