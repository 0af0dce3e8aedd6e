"""Live fine-tune: start a short run from the browser, watch its curves, stop it, open it in the Drift Explorer."""

from __future__ import annotations

import json
import uuid

import streamlit as st

from proxyfda.errors import ProxyFDAError
from proxyfda.forgetting import forgetting_report
from proxyfda.interpolation import wise_curve
from proxyfda.live import LiveJob, LiveTrainer, runs_table
from proxyfda.runs import list_runs, runs_root

from app import guard
from app.live_controls import live_controls
from app.live_views import format_eta, tradeoff_figure, training_curves, wise_figure
from app.routes import DRIFT_EXPLORER, TRADEOFF_RESULTS

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
        guard.check_finetune_config(config)
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
    problem = next((r["probe_problem"] for r in reversed(evals) if "probe_problem" in r), None)
    if problem:
        st.warning(f"The probe's structure could not be scored at some evaluations: {problem}. The encoder's "
                   "features may have collapsed; a lower learning rate or a stronger regulariser usually helps.")
    if job.state == "failed":
        st.error(f"The run failed: {job.error}")
    elif job.state == "cancelled":
        st.warning("Cancelled before it started; nothing was written.")
    elif job.state == "diverged":
        st.warning(f"The run diverged: its loss or weights became NaN or infinite at step {job.steps_done}, so it "
                   f"stopped there and kept its last finite checkpoint in {job.run_dir}. Try a lower learning rate.")
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


def run_forgetting_tools(runs: list) -> None:
    """For one chosen run: measure its forgetting (kept with the run), and WiSE-FT's α curve."""
    usable = [run for run in runs if run.method != "safe" and run.status in ("completed", "stopped")]
    if not usable:
        return
    names = {run.name: run for run in usable}
    chosen = names[st.selectbox("Run", list(names), key="live.chosen", help="A finished (or stopped) run.")]
    measure, wise = st.columns(2)
    with measure:
        if st.button("Measure forgetting", key="live.measure",
                     help="Linear probes on the held-out data sets, before and after fine-tuning, and the OT and "
                          "L2 distances between the feature distributions. A minute or two on a CPU."):
            with st.status(f"Measuring how much {chosen.name} forgot…", expanded=True) as status:
                forgetting_report([chosen.path], progress=st.write)
                status.update(label="Measured; the table and the trade-off plot show it", state="complete")
            st.rerun()
    with wise:
        if st.button("WiSE-FT curve", key="live.wise",
                     help="Interpolate the run's weights with the pre-trained ones and score each mix."):
            bar = st.progress(0.0)
            st.session_state["live.wise_curve"] = (chosen.name, wise_curve(
                chosen.path, progress=lambda message, fraction: bar.progress(fraction, text=message)))
            bar.empty()
    shown = st.session_state.get("live.wise_curve")
    if shown and shown[0] == chosen.name:
        curve = shown[1]
        alpha = st.select_slider("WiSE-FT α", curve["alpha"].tolist(), value=curve["alpha"].iloc[-1], key="live.alpha")
        row = curve[curve["alpha"] == alpha].iloc[0]
        st.plotly_chart(wise_figure(curve, alpha), key="live.wise_chart")
        st.caption(f"At α = {alpha:g}: task accuracy {row['accuracy']:.1%}, overlap@10 {row['probe_overlap']:.3f}, "
                   f"CKNNA {row['probe_cknna']:.3f} with the pre-trained probe space. α = 1 is {chosen.name} itself.")


def tradeoff_section(runs: list) -> None:
    """The trade-off sweep's frontiers, with every run here whose forgetting was measured."""
    st.subheader("Accuracy against forgetting")
    sweep = json.loads(TRADEOFF_RESULTS.read_text()) if TRADEOFF_RESULTS.exists() else None
    measured = [{"run": run.name, "A_LP": m["A_LP"], "delta_LP": m["delta_LP"]["mean"]}
                for run in runs if (m := run.forgetting())]
    if sweep is None and not measured:
        st.caption("No trade-off results to show: measure a run's forgetting above.")
        return
    st.plotly_chart(tradeoff_figure(sweep["runs"] if sweep else [], measured), key="live.tradeoff")
    if sweep:
        st.caption(f"Lines: each method's strengths, means over seeds {sweep['seeds']}, {sweep['steps']} steps each, "
                   f"from `{sweep['command']}` (docs/results/tradeoff). Faint dots: single runs. Stars: your measured "
                   "runs. Presets are named with the method, e.g. \"fda (paper)\".")


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
    table = runs_table(runs)
    st.dataframe(table, hide_index=True, key="live.runs",
                 column_config={"task accuracy": st.column_config.NumberColumn(format="percent"),
                                "mean ΔLP": st.column_config.NumberColumn(format="%+.3f"),
                                "overlap@10": st.column_config.NumberColumn(format="%.3f"),
                                "CKNNA": st.column_config.NumberColumn(format="%.3f"),
                                "OT distance": st.column_config.NumberColumn(format="%.3f"),
                                "L2 distance": st.column_config.NumberColumn(format="%.3f"),
                                "seconds": st.column_config.NumberColumn(format="%.0f s")})
    st.caption(f"Every run under {live.root}. overlap@10 and CKNNA compare the probe set's features at the run's "
               "last evaluation with the pre-trained ones (1 = every neighbourhood kept). Mean ΔLP (linear-probe "
               "accuracy on held-out data sets, fine-tuned minus pre-trained; below 0 is forgetting) and the OT and "
               "L2 distances appear once a run's forgetting is measured below.")
    run_forgetting_tools(runs)
else:
    st.caption(f"No runs under {live.root} yet; this table refreshes when a run finishes.")

tradeoff_section(runs)
