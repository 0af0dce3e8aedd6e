"""Thumbnail panels: a point's neighbours (kept / lost / gained) and a grid of selected images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import streamlit as st

from proxyfda.data import ImageSet
from proxyfda.drift import DriftReport, ThreeWay

THUMB_WIDTH = 64


def _thumbs(images: ImageSet, ids: Sequence[int], captions: Sequence[str], show_images: bool) -> None:
    if not len(ids):
        st.caption("none")
        return
    if show_images and images.has_images:
        st.image([images.thumbnail(int(i)) for i in ids], caption=list(captions), width=THUMB_WIDTH)
    else:
        st.write("; ".join(captions))  # each caption starts with the point's id


def _picture(images: ImageSet, row: int) -> None:
    """The focused point's image, or its id in large type when the points have no images (embedding files)."""
    if images.has_images:
        st.image(images.thumbnail(row), width=2 * THUMB_WIDTH)
    else:
        st.markdown(f"### #{row}")


def _captions(images: ImageSet, ids: Sequence[int], sims: dict[int, float]) -> list[str]:
    return [f"{int(i)} · {images.class_of(int(i))} · {sims[int(i)]:.2f}" if int(i) in sims else
            f"{int(i)} · {images.class_of(int(i))}" for i in ids]


def _l2_text(value: float) -> str:
    """A point's L2 drift, or why it has none (spaces of different widths)."""
    return f"{value:.3f}" if np.isfinite(value) else "n/a (the two spaces differ in width)"


def neighbour_panel(report: DriftReport, images: ImageSet, row: int, show_images: bool = True) -> None:
    """The focused point and its k nearest neighbours in each original (high-dimensional) space."""
    split = report.neighbours(row)
    sims_a = dict(zip(report.graph_a.indices[row].tolist(), report.graph_a.similarities[row].tolist()))
    sims_b = dict(zip(report.graph_b.indices[row].tolist(), report.graph_b.similarities[row].tolist()))
    head, info = st.columns([1, 5])
    with head:
        _picture(images, row)
    with info:
        st.markdown(f"**Point {row}** · class **{images.class_of(row)}** · overlap@{report.k} = "
                    f"**{report.overlap[row]:.2f}** (random: {report.metrics['overlap_at_k_random_baseline']:.3f}) · "
                    f"Jaccard {report.jaccard[row]:.2f} · L2 drift {_l2_text(report.l2_drift[row])}")
        st.caption("Neighbours by cosine similarity in the full feature spaces; captions: id · class · similarity "
                   "(pre-trained for kept and lost, fine-tuned for gained).")
    kept, lost, gained = st.columns(3)
    with kept:
        st.markdown(f"**Kept** ({len(split['kept'])}): neighbours in both spaces")
        _thumbs(images, split["kept"], _captions(images, split["kept"], sims_a), show_images)
    with lost:
        st.markdown(f"**Lost** ({len(split['lost'])}): pre-trained only")
        _thumbs(images, split["lost"], _captions(images, split["lost"], sims_a), show_images)
    with gained:
        st.markdown(f"**Gained** ({len(split['gained'])}): fine-tuned only")
        _thumbs(images, split["gained"], _captions(images, split["gained"], sims_b), show_images)


def selection_grid(images: ImageSet, report: DriftReport, ids: Sequence[int], show_images: bool = True,
                   limit: int = 60) -> None:
    """Thumbnails of a map selection, lowest overlap first."""
    ids = np.asarray(ids, dtype=np.int64)
    order = ids[np.argsort(report.overlap[ids], kind="stable")]
    shown = order[:limit]
    st.markdown(f"**Selection**: {len(ids)} points, mean overlap@{report.k} {report.overlap[ids].mean():.2f}"
                + (f" (showing the {limit} most drifted)" if len(ids) > limit else ""))
    _thumbs(images, shown, [f"{int(i)} · {report.overlap[int(i)]:.1f}" for i in shown], show_images)


def three_way_panel(both: ThreeWay, images: ImageSet, row: int, show_images: bool = True) -> None:
    """A point's pre-trained neighbours split by which of the two fine-tunes kept them."""
    split = both.split(row)
    head, info = st.columns([1, 5])
    with head:
        _picture(images, row)
    with info:
        st.markdown(f"**Point {row}** · class **{images.class_of(row)}** · overlap@{both.b.k}: "
                    f"**{both.b.overlap[row]:.2f}** under {both.name_b}, **{both.c.overlap[row]:.2f}** under {both.name_c}")
        st.caption("Its k nearest neighbours in the pre-trained space, by which fine-tune still has them among its "
                   "own k nearest. Captions: id · class.")
    for column, (title, ids) in zip(st.columns(4), split.items()):
        with column:
            st.markdown(f"**Kept by {title}** ({len(ids)})" if title != "neither" else f"**Lost by both** ({len(ids)})")
            _thumbs(images, ids, [f"{int(i)} · {images.class_of(int(i))}" for i in ids], show_images)
