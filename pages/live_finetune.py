"""Live fine-tune: start a short run from the browser, watch its curves, stop it, open it in the Drift Explorer."""

from __future__ import annotations

import uuid

import streamlit as st

from proxyfda.errors import ProxyFDAError
from proxyfda.live import LiveJob, LiveTrainer, runs_table
from proxyfda.runs import list_runs, runs_root

from app.live_controls import live_controls
from app.live_views import format_eta, training_curves
from app.routes import DRIFT_EXPLORER

JOB_KEY = "live.job"  # the id of this browser session's latest job
OWNER_KEY = "live.owner"  # this browser session, as the trainer knows it


@st.cache_resource(show_spinner=False)
def trainer(root: str) -> LiveTrainer:
    """One queue per process and runs folder, shared by every browser session."""
    return LiveTrainer(root)


st.title("Live fine-tune")
st.caption("Fine-tune an encoder for a few steps and watch, as it trains, the task improve and the pre-trained "
           "neighbourhood structure of a fixed probe set survive or break. One run trains at a time; "
           "others wait their turn.")

owner = st.session_state.setdefault(OWNER_KEY, uuid.uuid4().hex)
live = trainer(str(runs_root()))
config, start = live_controls()

if start:
    try:
        st.session_state[JOB_KEY] = live.submit(config, owner).id
    except ProxyFDAError as exc:
        st.error(f"{exc}")


def show_job(job: LiveJob) -> None:
    """The job's state, progress and curves; its controls once it has finished."""
    place = live.place(job)
    if place is not None:
        st.info(f"Waiting for the machine: place {place} in the queue. It starts when the run ahead finishes.")
    elif job.state == "running":
        done = job.steps_done
        st.progress(done / job.total_steps,
                    text=f"{job.config.method} · step {done}/{job.total_steps} · about {format_eta(job.eta_seconds())} left")
    if not job.done and st.button("Stop", key="live.stop", help="Ends the run at its next step; it keeps a checkpoint."):
        live.stop(job)
    train, evals = job.history()
    if train or evals:
        st.plotly_chart(training_curves(train, evals), key="live.curves")
    if job.state == "failed":
        st.error(f"The run failed: {job.error}")
    elif job.state == "cancelled":
        st.warning("Cancelled before it started; nothing was written.")
    elif job.done:
        accuracy = evals[-1]["accuracy"] if evals else None
        kept = evals[-1].get("probe_overlap") if evals else None
        st.success(f"Run {job.state} after {job.steps_done} steps"
                   + (f" · task accuracy {accuracy:.1%}" if accuracy is not None else "")
                   + (f" · overlap@10 with the pre-trained probe space {kept:.2f}" if kept is not None else "")
                   + f" · saved in {job.run_dir}")
        if st.button("Open in the Drift Explorer", type="primary", key="live.open"):
            st.switch_page(DRIFT_EXPLORER, query_params={"pretrained": job.config.base_encoder,
                                                         "finetuned": f"run:{job.run_dir}",
                                                         "image_size": str(job.config.image_size)})


@st.fragment(run_every=1.0)
def poll(job_id: str) -> None:
    """Redraw the running job every second; hand back to the whole page once it has finished."""
    job = live.job(job_id)
    if job.done:
        st.rerun(scope="app")
    show_job(job)


job = live.job(st.session_state.get(JOB_KEY, ""))
if job is None:
    st.info("Choose a method in the sidebar and press **Start fine-tune**. The default is a 100-step Proxy-FDA run "
            "of EfficientNet-Lite0 on MNIST digits, about a minute on a CPU.")
elif job.done:
    show_job(job)
else:
    poll(job.id)

st.subheader("Runs")
runs = list_runs(live.root)
if runs:
    st.dataframe(runs_table(runs), hide_index=True, key="live.runs",
                 column_config={"task accuracy": st.column_config.NumberColumn(format="percent"),
                                "overlap@10": st.column_config.NumberColumn(format="%.3f"),
                                "CKNNA": st.column_config.NumberColumn(format="%.3f"),
                                "seconds": st.column_config.NumberColumn(format="%.0f s")})
    st.caption(f"Every run under {live.root}. overlap@10 and CKNNA compare the probe set's features at the run's "
               "last evaluation with the pre-trained ones (1 = every neighbourhood kept).")
else:
    st.caption(f"No runs under {live.root} yet; this table refreshes when a run finishes.")
