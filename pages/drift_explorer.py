"""Drift Explorer: how a fine-tuned encoder's neighbourhoods differ from the pre-trained one's."""

from __future__ import annotations

import streamlit as st

from proxyfda.drift import check_embedding_files, encoder_names, three_way
from proxyfda.encoders import spec_run
from proxyfda.errors import ProxyFDAError
from proxyfda.projection import cached_pair
from proxyfda.vectors import file_stamp

from app import guard, session
from app.drift_controls import drift_controls
from app.linked_maps import render_linked_maps
from app.neighbours import neighbour_panel, selection_grid
from app.pipeline import (features_key, get_images, get_report, load_compare_features, load_features,
                          projection_jobs)
from app.report_views import (calibration_view, class_drift_view, export_buttons, html_report_button,
                              metrics_panel, most_drifted_table)
from app.three_way_view import three_way_view
from app.timeline_view import timeline_view

st.title("Drift Explorer")
st.caption("The same images through a pre-trained and a fine-tuned encoder: which neighbourhoods survive "
           "fine-tuning? Drift is measured on the k-NN graphs of the full feature spaces; the 2D maps are a guide.")

config, color_by, show_images = drift_controls()

try:
    guard.check_drift_config(config)  # first: no run is opened, and no folder read, outside the app's folders
    for run in filter(None, map(spec_run, filter(None, (config.pretrained, config.finetuned, config.compare)))):
        if note := run.incomplete_note():  # a stopped, diverged or interrupted run is shown, but not silently
            st.warning(note)
    check_embedding_files(config)  # two embedding files of different lengths: named before anything is read
    images = get_images(config.data, config.n, config.seed, config.labels,
                        file_stamp(config.labels) if config.labels else "")
    guard.check_count(len(images))
    if not images.has_images:
        st.info(f"{config.data}: these points come from embedding files without images, so each is shown by its "
                "id and class instead of a thumbnail (give the images they embed to see them).")
        show_images = False
    for note in images.notes:  # e.g. fewer images than asked for
        st.info(note)
    if images.skipped:
        st.warning(f"{len(images.skipped)} files in {config.data} were skipped (not images or unreadable).")
        with st.expander("Skipped files"):
            st.dataframe({"file": [f for f, _ in images.skipped], "reason": [r for _, r in images.skipped]})
    x_a, x_b = load_features(config, images)
    feature_key = features_key(config, images, config.finetuned)
    report = get_report(x_a, x_b, feature_key, images.labels, images.class_names, config.k, config.knn_backend)
    both = x_c = None
    if config.compare:
        x_c = load_compare_features(config, images)
        compare_key = features_key(config, images, config.compare)
        report_c = get_report(x_a, x_c, compare_key, images.labels, images.class_names, config.k, config.knn_backend)
        both = three_way(report, report_c, *encoder_names(config.finetuned, config.compare))
except ProxyFDAError as exc:
    st.error(f"{exc}")
    st.stop()

metrics_panel(report)
n = report.n


@st.fragment(run_every=1.0)
def maps_pending(job, key) -> None:
    """Poll the background UMAP job; the rest of the page stays usable meanwhile."""
    if job.done():
        st.rerun(scope="app")
    message = projection_jobs().messages.get(key, "working")
    st.info(f"Computing the 2D maps in the background: {message}. Everything below is ready to use.")


@st.fragment
def explore(maps) -> None:
    """Maps, neighbour lists and selection grid rerun together on a click, without the rest of the page."""
    session.focus_from_url()
    focus = session.focus(n)
    if maps is not None:
        render_linked_maps(maps[0], maps[1], report, color_by, focus)
        st.caption("Box, lasso or click in either map selects the same images in both. 2D positions are only a "
                   "hint; overlap@k in the full feature spaces is the measurement.")
    if focus is None:
        focus = int(report.most_drifted(1)["id"].iloc[0])
    picked = st.number_input("Inspect point (id)", min_value=0, max_value=n - 1, value=focus,
                             key=f"drift.focus_input.{focus}")
    session.set_focus(picked)
    neighbour_panel(report, images, picked, show_images)
    chosen = session.selection(n)
    if len(chosen) > 1:
        selection_grid(images, report, chosen, show_images)
        if st.button("Clear selection"):
            session.clear_selection()
            st.rerun(scope="fragment")


def pair_maps(x_b, key: tuple, pending: bool):
    """The maps of (x_a, x_b): from the cache, or a background job (polled when ``pending``); None, with
    the reason shown, when there are too few images for a map."""
    try:
        found = cached_pair(x_a, x_b, method=config.projection, seed=config.seed)
    except ProxyFDAError as exc:
        st.info(f"No 2D maps: {exc}.")
        return None
    if found is not None:
        return found
    key = key + (config.projection, config.seed)
    job = projection_jobs().submit(key, x_a, x_b, config.projection, config.seed)
    if not job.done():
        if pending:
            maps_pending(job, key)
        return None
    if job.exception() is not None:
        st.error(f"The 2D maps failed: {job.exception()}")
        return None
    return job.result()


maps = pair_maps(x_b, feature_key, pending=True)
explore(maps)


def export_tab(report) -> None:
    """The per-point and class tables as files, and the whole analysis as one HTML report."""
    export_buttons(report)
    html_report_button(report, images, maps, x_a, x_b, feature_key, config)


# Only the open tab runs: the class heatmap and the export files are built when asked for, which keeps
# them off the first page's path.
VIEWS = {"Most drifted": most_drifted_table, "Class drift": class_drift_view,
         "Calibration": lambda report: calibration_view(report, x_a, x_b, feature_key),
         "Over time": lambda report: timeline_view(config.finetuned), "Export": export_tab}
if both is not None:
    def three_way_tab(report) -> None:
        compared = pair_maps(x_c, compare_key, pending=maps is not None)
        three = None if maps is None or compared is None else (maps[0], maps[1], compared[1])
        three_way_view(both, images, three, color_by, show_images)

    VIEWS = {"Three-way": three_way_tab, **VIEWS}
session.tab_from_url(list(VIEWS))
for tab, view in zip(st.tabs(list(VIEWS), key=session.TAB_KEY, on_change="rerun"), VIEWS.values()):
    if tab.open:
        with tab:
            view(report)
session.tab_to_url(list(VIEWS))
