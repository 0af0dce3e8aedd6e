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


def tradeoff_figure(sweep_rows: list[dict], measured: list[dict]) -> go.Figure:
    """Task accuracy (A_LP) against mean ΔLP: each method's frontier over its strengths from the trade-off
    sweep (means over seeds, single runs faint), and this machine's measured runs as labelled stars."""
    from proxyfda.forgetting import frontier

    from plotly.colors import qualitative

    fig = go.Figure()
    others = [label for label in dict.fromkeys(r["label"] for r in sweep_rows) if label != "naive"]
    colours = {"naive": "black", **{label: qualitative.D3[i % len(qualitative.D3)] for i, label in enumerate(others)}}
    for label, colour in colours.items():
        mine = [r for r in sweep_rows if r["label"] == label]
        if not mine:
            continue
        acc, delta = frontier(sweep_rows, label)
        naive = label == "naive"  # one point (no strength to sweep): a star, as in docs/results/tradeoff
        fig.add_scatter(x=acc, y=delta, mode="markers" if naive else "lines+markers", name=label, legendgroup=label,
                        line=dict(color=colour), marker=dict(color=colour, size=14 if naive else 7,
                                                             symbol="star" if naive else "circle"))
        fig.add_scatter(x=[100 * r["A_LP"] for r in mine], y=[100 * r["delta_LP"]["mean"] for r in mine],
                        mode="markers", marker=dict(size=5, opacity=0.3, color=colour), legendgroup=label,
                        showlegend=False, hovertext=[f"{label} · strength {r['strength']} · seed {r['seed']}"
                                                     for r in mine])
    if measured:
        fig.add_scatter(x=[100 * r["A_LP"] for r in measured], y=[100 * r["delta_LP"] for r in measured],
                        mode="markers+text", text=[r["run"] for r in measured], textposition="top center",
                        name="your runs", marker=dict(size=14, symbol="star", color="#f9a825",
                                                      line=dict(color="black", width=1)))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="task accuracy A_LP (%)", yaxis_title="mean ΔLP on held-out sets (points)",
                      title="Accuracy against forgetting (up and right is better)")
    return fig


def wise_figure(curve: pd.DataFrame, alpha: float) -> go.Figure:
    """Task accuracy and the probe's kept structure along WiSE-FT's α, with the chosen α marked."""
    fig = go.Figure()
    for column, label in (("accuracy", "task accuracy"), *PROBE_CURVES.items()):
        fig.add_scatter(x=curve["alpha"], y=curve[column], mode="lines+markers", name=label)
    fig.add_vline(x=alpha, line_dash="dot", line_color="black")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1.02],
                      xaxis_title="α (0: pre-trained weights, 1: the fine-tuned run)",
                      title="WiSE-FT: (1−α)·θ0 + α·θ_ft")
    return fig
