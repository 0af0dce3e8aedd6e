"""Teaching: a 2-D toy where naive fine-tuning breaks the pre-trained neighbourhoods and Proxy-FDA keeps them."""

from __future__ import annotations

import streamlit as st

from proxyfda.teaching import ToyRun, toy_problem

from app.teaching_views import toy_figure

PREFIX = "teach."
METHODS = {"naive": "Naive fine-tuning (task loss only)", "proxy-fda": "Proxy-FDA (task loss + λ · Proxy-FDA)",
           "fda": "FDA (task loss + λ · FDA)"}


def runs(seed: int, weight: float, k: int, compared: str) -> dict[str, ToyRun]:
    """This session's toy runs, rebuilt when the setup changes (every run starts from the same network)."""
    setup = (seed, weight, k, compared)
    if st.session_state.get(PREFIX + "setup") != setup:
        problem = toy_problem(seed=seed)
        st.session_state[PREFIX + "setup"] = setup
        st.session_state[PREFIX + "runs"] = {m: ToyRun(problem, m, weight=weight, k=k, seed=seed)
                                              for m in ("naive", compared)}
    return st.session_state[PREFIX + "runs"]


st.title("Teaching: why fine-tuning forgets, and how Proxy-FDA holds on")
st.caption("Each dot is an image's feature. The pre-trained encoder put four classes around a circle, each in two "
           "sub-clusters: structure the new task does not need. The new task pairs opposite classes (blue with "
           "green, orange with red), so the encoder must fold the space. Press **Step** and watch: naive "
           "fine-tuning solves the task by merging classes, and neighbourhoods break; Proxy-FDA solves it too but "
           "keeps each point's pre-trained neighbours near it.")

with st.sidebar:
    compared = st.radio("Compare naive with", ["proxy-fda", "fda"], key=PREFIX + "compared",
                        format_func=lambda m: {"proxy-fda": "Proxy-FDA", "fda": "FDA (no proxies)"}[m])
    weight = st.slider("λ (strength)", 0.0, 5.0, 2.0, 0.5, key=PREFIX + "weight")
    k = st.slider("K neighbours", 2, 10, 5, key=PREFIX + "k")
    seed = int(st.number_input("Seed", 0, 1000, 0, key=PREFIX + "seed"))
    show_arrows = st.checkbox("Pull and push arrows", True, key=PREFIX + "arrows")
    show_proxies = st.checkbox("Proxies", True, key=PREFIX + "proxies")

toys = runs(seed, weight, k, compared)
problem = next(iter(toys.values())).problem

buttons = st.columns([1, 1, 1, 4])
if buttons[0].button("Step ×10", key=PREFIX + "step10", type="primary"):
    for toy in toys.values():
        toy.step(10)
if buttons[1].button("Step ×100", key=PREFIX + "step100"):
    for toy in toys.values():
        toy.step(100)
if buttons[2].button("Reset", key=PREFIX + "reset"):
    st.session_state.pop(PREFIX + "setup", None)
    toys = runs(seed, weight, k, compared)

anchor = st.slider("Anchor point", 0, problem.n - 1, 3, key=PREFIX + "anchor",
                   help="The point whose neighbourhood the arrows and proxies belong to.")
neighbours = problem.neighbours(k)[anchor]

columns = st.columns(3)
with columns[0]:
    st.plotly_chart(toy_figure(problem.pre, problem.labels, "Pre-trained", anchor, neighbours), key=PREFIX + "pre")
for column, (method, toy) in zip(columns[1:], toys.items()):
    scores = toy.scores()
    with column:
        title = f"{METHODS[method].split(' (')[0]} · step {toy.steps}"
        st.plotly_chart(toy_figure(toy.layout(), problem.labels, title, anchor, neighbours, toy.forces(anchor),
                                   show_arrows, show_proxies and method == "proxy-fda"), key=PREFIX + method)
        st.metric(f"neighbours kept (overlap@{k})", f"{scores['overlap']:.0%}")
        st.metric("task accuracy", f"{scores['accuracy']:.0%}")

st.caption("**Star**: the anchor. **Grey lines**: its K nearest neighbours in the pre-trained layout, drawn where "
           "they are now. **Green arrows**: the pull of the anchor's loss on those neighbours (towards it, above the "
           "threshold similarity). **Red arrows**: the push on the non-neighbours it pushes hardest. On the naive run "
           "the arrows show what FDA *would* do; nothing applies them. **Diamonds** (Proxy-FDA): proxies, synthetic "
           "points the generator pools from the anchor's neighbours (green) and non-neighbours (red); they add pairs "
           "between real points, so the structure is held with a batch this small. The losses see each point as the "
           "direction (x, y, 1), so the plane is a map of directions.")
