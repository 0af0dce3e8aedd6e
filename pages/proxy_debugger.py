"""Proxy debugger: one batch through the real Proxy-FDA loss, an anchor's pairs and proxies, the batch's proxies."""

from __future__ import annotations

import streamlit as st

from proxyfda import proxy_debug
from proxyfda.errors import ProxyFDAError
from proxyfda.runs import Run, list_runs, runs_root

from app import guard
from app.debugger_views import anchor_view, distributions, effects_chart, proxy_map, proxy_view, similarity_scatter

PREFIX = "debug."
START_LABEL = "start of training (pre-trained encoder, fresh generator)"


@st.cache_data(show_spinner=False, max_entries=4)
def cached_batch(state: str, data: str, batch_size: int, seed: int) -> proxy_debug.DebugBatch:
    return proxy_debug.load_batch(state, data=data or None, batch_size=batch_size, seed=seed)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_inspection(_batch: proxy_debug.DebugBatch, key: tuple, options: dict,
                      generator_steps: int) -> proxy_debug.Inspection:
    return proxy_debug.inspect_batch(_batch, options, generator_steps)


st.title("Proxy debugger")
st.caption("One batch through the real Proxy-FDA loss: its pre-trained kNN graph, what the loss does to one anchor, "
           "and the proxies the generator makes. Everything here is read from the loss module's own records. The "
           "proxy generator is this project's reconstruction (the paper publishes no code).")

sidebar = st.sidebar
runs = [run for run in list_runs(runs_root()) if run.method != "safe" and run.checkpoints()]
states = {START_LABEL: proxy_debug.START, **{f"{run.name} ({run.method}, step {run.summary().get('steps_done')})":
                                            str(run.path) for run in runs}}
wanted = st.query_params.get("run")
labels = list(states)
index = next((i for i, label in enumerate(labels) if wanted and states[label].endswith(wanted)), 0)
state_label = sidebar.selectbox("State", labels, index=index, key=PREFIX + "state",
                                help="The start of training, or a run's last checkpoint (with its saved generator).")
state = states[state_label]
data = sidebar.text_input("Data", "", key=PREFIX + "data", placeholder="the run's own (mnist:train at the start)")
batch_size = sidebar.select_slider("Batch size", [16, 32, 64, 128], value=64, key=PREFIX + "batch")
seed = int(sidebar.number_input("Batch seed", 0, 10_000, 0, key=PREFIX + "seed"))

if state != proxy_debug.START:
    st.query_params["run"] = state.rsplit("/", 1)[-1]
elif "run" in st.query_params:
    del st.query_params["run"]

try:
    guard.check_specs(data=[data])
    with st.spinner("Embedding the batch with both encoders…"):
        batch = cached_batch(state, data.strip(), batch_size, seed)
    guard.check_images(batch.images)
except ProxyFDAError as exc:
    st.error(f"{exc}")
    st.stop()

start = proxy_debug.knob_defaults(batch)
sidebar.markdown("**Loss options** (starting from the run's)")  # keyed by state: a new state starts from its own
k = int(sidebar.number_input("K neighbours", 1, batch_size - 2, min(int(start["k"]), batch_size - 2),
                             key=f"{PREFIX}k@{state}"))
n_proxies = int(sidebar.number_input("Proxies per side", 1, 16, int(start["n_proxies"]),
                                     key=f"{PREFIX}n_proxies@{state}"))
alpha = float(sidebar.number_input("α (generator's variance term)", 0.0, 100.0, float(start["alpha"]),
                                   key=f"{PREFIX}alpha@{state}"))
generator_steps = int(sidebar.number_input("Generator warm-up steps", 0, 500, 50, step=10, key=PREFIX + "warm",
                                           help="Train the generator on this batch first (its own loss, the encoder "
                                                "fixed): a fresh generator has never trained."))

try:
    options = {"k": k, "n_proxies": n_proxies, "alpha": alpha}
    with st.spinner("Running the loss…"):
        found = cached_inspection(batch, (state, data, batch_size, seed), options, generator_steps)
except ProxyFDAError as exc:
    st.error(f"{exc}")
    st.stop()

t, d = found.terms, found.diagnostics
cols = st.columns(6)
cols[0].metric("FDA loss (real + proxies)", f"{t['fda']:.3f}")
cols[1].metric("pull part", f"{t['loss_pos']:.3f}")
cols[2].metric("push part", f"{t['loss_neg']:.3f}")
cols[3].metric("generator loss", f"{t['generator']:.3f}")
cols[4].metric("proxy → nearest real", f"{d['proxy_nn_dist']:.3f}")
cols[5].metric("proxy diversity", f"{d['proxy_diversity']:.3f}")
st.caption(f"State: {batch.state} (step {batch.step}) · {len(batch.pre)} images of "
           f"{len(set(batch.labels.tolist()))} classes · generator: {found.generator} · options "
           + ", ".join(f"{name}={value}" for name, value in found.options.items()))

anchor_labels = [f"{i} · class {batch.images.class_of(i)}" for i in range(len(batch.pre))]
asked = st.query_params.get("anchor")
default_anchor = int(asked) if asked and asked.isdigit() and int(asked) < len(batch.pre) else 0
anchor = st.selectbox("Anchor", range(len(batch.pre)), index=default_anchor, format_func=anchor_labels.__getitem__,
                      key=PREFIX + "anchor")
st.query_params["anchor"] = str(anchor)

tab_anchor, tab_batch, tab_effects = st.tabs(["Anchor", "Batch", "What K, proxies and α change"])
with tab_anchor:
    anchor_view(found, anchor)
    proxy_view(found, anchor)
with tab_batch:
    st.plotly_chart(proxy_map(found, anchor), key="debug.map")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(distributions(found), key="debug.nn")
    with right:
        st.plotly_chart(similarity_scatter(found, anchor), key="debug.sims")
    if state != proxy_debug.START:
        history = Run.open(state).history()
        if "proxy_diversity" in history:
            evals = history[(history.kind == "eval") & history.proxy_diversity.notna()]
            st.line_chart(evals.set_index("step")[["proxy_diversity", "proxy_nn_dist"]], height=220)
            st.caption("Over the run: the proxies' diversity and distance to the nearest real feature at each "
                       "evaluation, logged by the loss during training.")
with tab_effects:
    option = st.radio("Vary", list(proxy_debug.EFFECT_VALUES), horizontal=True, key=PREFIX + "effect",
                      format_func={"k": "K neighbours", "n_proxies": "proxies per side", "alpha": "α"}.get)
    st.caption(f"Tries {', '.join(map(str, proxy_debug.EFFECT_VALUES[option]))} with the other options as set, each "
               f"with a generator warmed up {generator_steps} steps on this batch.")
    if st.button("Compare", key=PREFIX + "compare"):
        bar = st.progress(0.0)
        table = proxy_debug.option_effects(batch, option, options=options, generator_steps=generator_steps,
                                           progress=lambda message, f: bar.progress(f, text=message))
        bar.empty()
        st.session_state[PREFIX + "effects"] = (option, table)
    shown = st.session_state.get(PREFIX + "effects")
    if shown and shown[0] == option:
        st.plotly_chart(effects_chart(shown[1], option), key="debug.effects")
        st.dataframe(shown[1], hide_index=True)
