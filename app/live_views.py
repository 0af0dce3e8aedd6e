"""Views of runs, live or finished: the training curves, and the table of runs side by side."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: the probe scores every evaluation logs (proxyfda.training.probe_scores), as the curves name them
PROBE_CURVES = {"probe_overlap": "overlap@10", "probe_cknna": "CKNNA", "probe_cka": "linear CKA"}


def training_curves(train: list[dict], evals: list[dict]) -> go.Figure:
    """Three panels against the step: the losses (task, and each regulariser term), task accuracy on the
    eval set, and how much of the pre-trained neighbourhood structure the probe set keeps."""
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=("Losses", "Task accuracy (eval set)", "Kept from the pre-trained space (probe)"))
    if train:
        frame = pd.DataFrame.from_records(train)
        terms = ["task"] + [c for c in frame.columns if c.startswith("reg_") and frame[c].notna().any()]
        for name in terms:
            fig.add_trace(go.Scatter(x=frame["step"], y=frame[name], mode="lines", name=name, legendgroup="loss",
                                     legendgrouptitle_text="loss terms"), row=1, col=1)
    if evals:
        frame = pd.DataFrame.from_records(evals)
        fig.add_trace(go.Scatter(x=frame["step"], y=frame["accuracy"], mode="lines+markers", name="accuracy",
                                 legendgroup="acc", legendgrouptitle_text="eval"), row=1, col=2)
        for column, label in PROBE_CURVES.items():
            if column in frame:
                fig.add_trace(go.Scatter(x=frame["step"], y=frame[column], mode="lines+markers", name=label,
                                         legendgroup="probe", legendgrouptitle_text="probe vs step 0"), row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="step", row=1, col=col, rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=3)
    fig.update_layout(height=330, margin=dict(l=10, r=10, t=40, b=10), legend=dict(groupclick="toggleitem"))
    return fig


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "estimating…"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
