"""Drift over time: a run's probe set through its evaluations, from the snapshots the run kept.

Shown in the Drift Explorer when the fine-tuned encoder is a run (``run:<dir>``): the preservation
scores against the step, the points whose neighbourhoods broke first, and the probe's map played
through the evaluations (maps chained and aligned frame to frame, so points move smoothly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from proxyfda.drift import Timeline, run_timeline
from proxyfda.errors import ProxyFDAError
from proxyfda.projection import project_sequence
from proxyfda.runs import PROBE, Run

from app.neighbours import THUMB_WIDTH
from app.pipeline import projection_jobs

BROKEN = 0.5  # a neighbourhood counts as broken once fewer than half of its step-0 neighbours remain


def run_dir_of(spec: str) -> Path | None:
    """The run directory a ``run:<dir>`` spec names; None for any other spec."""
    return Path(spec.removeprefix("run:")).expanduser() if spec.startswith("run:") else None


@st.cache_data(show_spinner="Reading the run's feature history…", max_entries=4)
def get_timeline(run_dir: str, snapshot_steps: tuple[int, ...], k: int) -> Timeline:
    """The run's timeline; ``snapshot_steps`` is part of the key, so a run still training is read afresh."""
    return run_timeline(run_dir, k)


def scores_figure(timeline: Timeline) -> go.Figure:
    fig = go.Figure()
    for column in ("overlap@k", "CKNNA", "linear CKA", "task accuracy"):
        values = timeline.scores[column]
        if values.notna().any():
            fig.add_trace(go.Scatter(x=timeline.scores["step"], y=values, mode="lines+markers",
                                     name=column.replace("@k", f"@{timeline.k}")))
    broken = (timeline.overlap < BROKEN).mean(1)
    fig.add_trace(go.Bar(x=timeline.steps, y=broken, name=f"share broken (overlap < {BROKEN})", opacity=0.3))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis=dict(range=[0, 1.02]), title="Kept from the pre-trained probe space, per evaluation")
    return fig


def frames_figure(timeline: Timeline, maps: np.ndarray) -> go.Figure:
    """The probe's map at every evaluation as animation frames, coloured by each point's overlap@k with
    step 0 at that step; Play and the slider move through the steps on the page, without a rerun."""
    names = [timeline.images.class_of(i) for i in range(len(timeline.images))]

    def scatter(s: int) -> go.Scatter:
        return go.Scatter(x=maps[s, :, 0], y=maps[s, :, 1], mode="markers", text=names, ids=[str(i) for i in
                          range(maps.shape[1])], customdata=timeline.overlap[s],
                          hovertemplate="id %{id} · %{text}<br>overlap %{customdata:.2f}<extra></extra>",
                          marker=dict(size=6, color=timeline.overlap[s], cmin=0, cmax=1, colorscale="RdYlBu",
                                      colorbar=dict(title=f"overlap@{timeline.k}")))

    lo, hi = maps.reshape(-1, 2).min(0), maps.reshape(-1, 2).max(0)
    pad = 0.05 * (hi - lo)
    steps = [str(step) for step in timeline.steps]
    fig = go.Figure(data=[scatter(0)], frames=[go.Frame(data=[scatter(s)], name=name) for s, name in enumerate(steps)])
    play = dict(frame=dict(duration=700, redraw=False), transition=dict(duration=500), fromcurrent=True)
    fig.update_layout(
        height=520, margin=dict(l=10, r=10, t=30, b=10), title="The probe's map through the run (step 0 = pre-trained)",
        xaxis=dict(range=[lo[0] - pad[0], hi[0] + pad[0]], visible=False),
        yaxis=dict(range=[lo[1] - pad[1], hi[1] + pad[1]], visible=False),
        updatemenus=[dict(type="buttons", x=0, y=0, xanchor="left", yanchor="top", direction="left",
                          buttons=[dict(label="▶ Play", method="animate", args=[None, play]),
                                   dict(label="❚❚ Pause", method="animate",
                                        args=[[None], dict(mode="immediate", frame=dict(duration=0))])])],
        sliders=[dict(active=0, x=0.22, len=0.78, y=0, currentvalue=dict(prefix="step ", xanchor="right"),
                      steps=[dict(label=name, method="animate",
                                  args=[[name], dict(mode="immediate", frame=dict(duration=0, redraw=False),
                                                     transition=dict(duration=300))])
                             for name in steps])])
    return fig


def timeline_view(spec: str) -> None:
    """The Over-time tab for the fine-tuned encoder ``spec``."""
    run_dir = run_dir_of(spec)
    if run_dir is None:
        st.info("Drift over time needs a run: set the fine-tuned encoder to `run:<dir>` (a run started on the Live "
                "fine-tune page or by `proxyfda finetune`). Every evaluation of a run keeps its probe set's features.")
        return
    try:
        run = Run.open(run_dir)
        timeline = get_timeline(str(run.path), tuple(run.probe_steps()), 10)
    except ProxyFDAError as exc:
        st.info(f"{exc}")
        return
    st.caption(f"The run's probe set: {len(timeline.images)} images of {run.config.eval_data} (not the images above), "
               f"compared at every evaluation with step 0, the pre-trained encoder. Snapshots under "
               f"{run.path / PROBE}.")
    st.plotly_chart(scores_figure(timeline), key="drift.time_scores")

    left, right = st.columns([3, 2])
    with left:
        key = ("sequence", str(run.path), tuple(timeline.steps))
        job = projection_jobs().submit_call(key, project_sequence, timeline.features)
        if job.done() and job.exception() is None:
            st.plotly_chart(frames_figure(timeline, job.result()), key="drift.time_maps")
        elif job.done():
            st.error(f"The maps over time failed: {job.exception()}")
        else:
            maps_pending(key)
    with right:
        broke = timeline.broke_first(12, BROKEN)
        st.markdown(f"**Broke first**: the points whose overlap@{timeline.k} fell below {BROKEN} earliest "
                    f"({int((timeline.first_break(BROKEN) >= 0).sum())} of {len(timeline.images)} broke at some step)")
        if len(broke):
            st.image([timeline.images.thumbnail(int(i)) for i in broke["id"]], width=THUMB_WIDTH,
                     caption=[f"{i} · {c} · step {s}" for i, c, s in zip(broke["id"], broke["class"],
                                                                          broke["broke at step"])])
            st.dataframe(broke, hide_index=True, key="drift.time_broke")
        else:
            st.caption("No neighbourhood broke.")


@st.fragment(run_every=1.0)
def maps_pending(key: tuple) -> None:
    job = projection_jobs().jobs.get(key)
    if job is None or job.done():
        st.rerun(scope="app")
    st.info(f"Mapping the probe set at every step in the background: {projection_jobs().messages.get(key, 'working')}.")
