"""A drift analysis as one self-contained HTML file, and how the drift scores read to people.

`SCORE_INFO` names and explains each global score of a `DriftReport` (the app's metrics panel shows
the same words) and `calibration_display` formats `proxyfda.drift.calibrate`'s table for reading.
`report_html` builds the page from what an analysis already has (the report, its images, the two
maps, the calibration table and the config) and embeds everything: plotly.js itself, the map data,
thumbnails as PNG data URIs. The file therefore opens offline and can be sent as it is. Every string
that comes from the user (specs, class names, paths) is HTML-escaped. `write_report` is the command
line's route from a config to that file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
import platform
import re
import shlex
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .config import DriftConfig
from .data import ImageSet
from .drift import NULL_PERMUTATIONS, DriftReport, StageProgress, calibrate, encoder_names, run_drift_features
from .errors import ProxyFDAError
from .paths import atomic_write_text
from .projection import project_pair

#: every global score in the order it is shown: metrics key -> (label, what it measures)
SCORE_INFO: dict[str, tuple[str, str]] = {
    "overlap_at_k_mean": ("overlap@k", "Mean over points of |N_pre(i) ∩ N_ft(i)| / k: the share of each point's k "
                          "nearest neighbours (cosine, full feature space) that survive fine-tuning. Not Jaccard."),
    "jaccard_mean": ("Jaccard", "Mean of |A ∩ B| / |A ∪ B| of the two neighbour sets."),
    "order_agreement_mean": ("order agreement", "Mean over points of the longest common subsequence of the two "
                             "ranked neighbour lists, over k: like overlap@k, but the shared neighbours must also "
                             "keep their order."),
    "trustworthiness": ("trustworthiness", "Are the fine-tuned space's neighbourhoods also neighbourhoods before? "
                        "1 = no intruders."),
    "continuity": ("continuity", "Are the pre-trained neighbourhoods kept after fine-tuning? 1 = nothing torn apart."),
    "linear_cka": ("linear CKA", "Linear CKA between the two feature matrices: 1 = the same geometry up to rotation "
                   "and scale."),
    "cknna": ("CKNNA", "CKNNA (Huh et al. 2024): unbiased CKA of the cosine kernels restricted to pairs that are "
              "k-nearest neighbours in both spaces. Local geometry: 1 = the same, about 0 = unrelated."),
    "procrustes_disparity": ("Procrustes disparity", "Residual after the best rotation, scale and translation "
                             "(scipy's definition): 0 = identical shape."),
    "mean_l2_drift": ("mean L2 drift", "Mean distance between each image's L2-normalised pre-trained and "
                      "fine-tuned features."),
}
#: how each projection method (`proxyfda.config.PROJECTION_METHODS`) places the two maps, in words
PLACEMENT = {"init": "the fine-tuned map starts from the pre-trained layout and is rotated onto it",
             "independent": "each space mapped on its own, then rotated onto the other",
             "aligned": "both spaces mapped together by AlignedUMAP"}
#: points above this many are drawn in WebGL; below, as SVG (crisper, and printable)
SVG_POINTS = 5000
#: thumbnails are at most this many pixels a side: small files, and enough to recognise an image
THUMB_PIXELS = 64
#: class colours on the maps (Tableau 10, then more distinct hues for larger label sets)
PALETTE = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf")
#: the distributions whose versions the report records (python is added from the interpreter)
VERSIONED = ("proxyfda", "torch", "open_clip_torch", "faiss-cpu", "faiss-gpu", "umap-learn", "numpy", "plotly")


def score_label(key: str, k: int | None = None) -> str:
    """A score's label, with the report's k written in where the label has one (``overlap@10``)."""
    label = SCORE_INFO[key][0]
    return label.replace("@k", f"@{k}") if k is not None else label


def calibration_display(table: pd.DataFrame) -> pd.DataFrame:
    """`proxyfda.drift.calibrate`'s table for reading: the score's label, its value, the null as
    ``mean ± sd`` and the 95 % bootstrap interval (``—`` for scores without per-point values);
    indexed by the score's metrics key."""
    return pd.DataFrame({
        "score": [score_label(name) for name in table["score"]],
        "value": table["value"].to_numpy(),
        "null (mean ± sd)": [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["null_mean"], table["null_sd"])],
        "95 % interval": ["—" if np.isnan(lo) else f"{lo:.3f} – {hi:.3f}"
                          for lo, hi in zip(table["ci_low"], table["ci_high"])],
    }, index=pd.Index(table["score"], name="key"))


def environment_versions() -> dict[str, str]:
    """The installed versions of python and of the packages an analysis runs on (read from package
    metadata: nothing is imported). Packages that are not installed are left out."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def thumbnail_uri(images: ImageSet, index: int, size: int = THUMB_PIXELS) -> str:
    """Image ``index`` as a PNG data URI, at most ``size`` pixels a side."""
    from PIL import Image

    image = Image.fromarray(np.asarray(images.thumbnail(int(index), size=size), dtype=np.uint8))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def command_line(config: DriftConfig, out: str = "drift-report.html") -> str:
    """The ``proxyfda report`` command that analyses ``config`` again (every option spelled out, so a
    change of defaults cannot change what it does; an empty ``compare`` is left out)."""
    options = [f"--{name.replace('_', '-')} {shlex.quote(str(value))}"
               for name, value in config.to_dict().items() if not (name in ("compare", "labels") and not value)]
    return " ".join(["proxyfda report", *options, "--out", shlex.quote(out)])


def report_file_name(config: DriftConfig) -> str:
    """A file name for the report of ``config``, from its fine-tuned encoder and data set, e.g.
    ``drift-report-naive-s0-fashion-mnist-test.html`` (anything but letters, digits, ``.`` and ``-``
    becomes ``-``)."""
    stem = "-".join(["drift-report", *encoder_names(config.finetuned), config.data])
    return re.sub(r"[^A-Za-z0-9.]+", "-", stem).strip("-")[:120] + ".html"


def check_output(out: str | Path) -> Path:
    """The report's path, checked before any work is done: its folder is created if missing and must
    be writable, and the path must not be a folder itself."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ProxyFDAError(f"the report's path {path} is a folder: give a file name, e.g. {path / 'drift-report.html'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProxyFDAError(f"cannot create the folder {path.parent} for the report ({exc.strerror}): "
                            "choose another path") from None
    if not os.access(path.parent, os.W_OK):
        raise ProxyFDAError(f"cannot write into {path.parent}: choose a folder you may write to")
    return path


def write_report(config: DriftConfig, out: str | Path, progress: StageProgress | None = None,
                 top: int = 12) -> Path:
    """The whole analysis of ``config`` (images, features, drift, calibration, maps: each from its cache
    when there) written as one HTML file at ``out``; the path is checked first."""
    path = check_output(out)
    say = progress or (lambda message, fraction: None)
    images, x_a, x_b, report = run_drift_features(config, lambda message, fraction: say(message, 0.64 * fraction))
    say(f"Comparing each score with {NULL_PERMUTATIONS} random re-pairings of the images", 0.66)
    calibration = calibrate(report, x_a, x_b)
    say("Projecting both spaces with UMAP", 0.72)
    maps = project_pair(x_a, x_b, method=config.projection, seed=config.seed,
                        progress=lambda message: say(message, 0.75))
    say("Writing the report", 0.97)
    atomic_write_text(path, report_html(report, images, maps, calibration, config, top=top))
    say("Done", 1.0)
    return path


def report_html(report: DriftReport, images: ImageSet, maps: tuple[np.ndarray, np.ndarray],
                calibration: pd.DataFrame, config: DriftConfig, top: int = 12,
                versions: dict[str, str] | None = None) -> str:
    """The drift analysis as one self-contained HTML page.

    ``maps`` are the pre-trained and fine-tuned 2-D maps (`proxyfda.projection.project_pair`),
    ``calibration`` is `proxyfda.drift.calibrate`'s table, ``top`` how many of the most drifted points
    are shown with their neighbours. ``versions`` defaults to `environment_versions`.
    """
    if len(maps[0]) != report.n or len(maps[1]) != report.n or len(images) != report.n:
        raise ProxyFDAError(f"the report has {report.n} points but the maps have {len(maps[0])} and "
                            f"{len(maps[1])} and the image set {len(images)}: build all three from the same images")
    versions = versions or environment_versions()
    drifted = [int(i) for i in report.most_drifted(top)["id"]]
    sections = (_scores_section(report, calibration), _maps_section(report, maps, config, drifted),
                _drifted_section(report, images, drifted), _classes_section(report),
                _provenance_section(report, images, config, versions))
    title = f"Drift report: {config.pretrained} → {config.finetuned} on {config.data}"
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{_header(report, images, config, calibration)}\n{''.join(sections)}\n"
            f"<footer>Written by proxyfda {_e(versions.get('proxyfda', ''))} on "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Self-contained: it needs no network.</footer>\n"
            f"</main>\n</body>\n</html>\n")


# ---------------------------------------------------------------------------------------------
# the page's parts


def _e(value: object) -> str:
    """Any value as escaped HTML text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _section(anchor: str, title: str, what: str, body: str) -> str:
    return (f"<section id=\"{anchor}\">\n<h2>{title}</h2>\n<p class=\"what\">{what}</p>\n{body}\n</section>\n")


def _header(report: DriftReport, images: ImageSet, config: DriftConfig, calibration: pd.DataFrame) -> str:
    m = report.metrics
    overlap = calibration.set_index("score").loc["overlap_at_k_mean"] if "overlap_at_k_mean" in set(
        calibration["score"]) else None
    interval = ("" if overlap is None or np.isnan(overlap["ci_low"])
                else f" (95 % interval {overlap['ci_low']:.1%} – {overlap['ci_high']:.1%})")
    null = "" if overlap is None else f"; images paired at random keep {overlap['null_mean']:.1%}"
    compare = (f"<p class=\"note\">Only the fine-tuned encoder above is in this report; the second fine-tune "
               f"<code>{_e(config.compare)}</code> is not (<code>proxyfda drift --compare</code> writes the three-way "
               f"comparison).</p>" if config.compare else "")
    return (f"<header>\n<p class=\"kicker\">proxyfda · drift report</p>\n"
            f"<h1>What fine-tuning did to the feature space</h1>\n"
            f"<p class=\"specs\"><span class=\"pre\">{_e(config.pretrained)}</span> → "
            f"<span class=\"ft\">{_e(config.finetuned)}</span> on {report.n:,} images of <code>{_e(config.data)}</code>,"
            f" k = {report.k}</p>\n"
            f"<p class=\"lede\">On average an image keeps <strong>{m['overlap_at_k_mean']:.1%}</strong> of its "
            f"{report.k} nearest neighbours after fine-tuning{interval}{null} (k/(N−1) = "
            f"{m['overlap_at_k_random_baseline']:.4f}).</p>\n{compare}"
            f"<nav><a href=\"#scores\">Scores</a><a href=\"#maps\">Maps</a><a href=\"#drifted\">Most drifted</a>"
            f"<a href=\"#classes\">Class drift</a><a href=\"#provenance\">How it was made</a></nav>\n</header>\n")


def _scores_section(report: DriftReport, calibration: pd.DataFrame) -> str:
    shown = calibration_display(calibration)
    omitted = report.metrics.get("omitted") or {}
    rows = []
    for key, (_, what) in SCORE_INFO.items():
        null, interval = (shown.loc[key, "null (mean ± sd)"], shown.loc[key, "95 % interval"]) if key in shown.index \
            else ("—", "—")
        value = report.metrics.get(key)
        cell = _number(value) if value is not None else "<span title=\"{}\">not computed</span>".format(
            _e(omitted.get(key, "not in this report")))
        rows.append(f"<tr><th scope=\"row\">{_e(score_label(key, report.k))}</th><td class=\"num\">{cell}</td>"
                    f"<td class=\"num\">{_e(null)}</td><td class=\"num\">{_e(interval)}</td>"
                    f"<td class=\"what\">{_e(what)}</td></tr>")
    notes = "".join(f"<li>{_e(reason)}</li>" for reason in
                    [*omitted.values(), *([report.metrics["knn_note"]] if "knn_note" in report.metrics else [])])
    body = (f"<table class=\"scores\">\n<thead><tr><th>score</th><th class=\"num\">value</th>"
            f"<th class=\"num\">null (mean ± sd)</th><th class=\"num\">95 % interval</th><th>what it measures</th>"
            f"</tr></thead>\n<tbody>{''.join(rows)}</tbody>\n</table>\n"
            f"<p class=\"small\">Random baseline of overlap@{report.k}: k/(N−1) = "
            f"{report.metrics['overlap_at_k_random_baseline']:.4f}. N = {report.n:,} images, kNN backend "
            f"{_e(report.metrics['knn_backend'])}.</p>" + (f"<ul class=\"small\">{notes}</ul>" if notes else ""))
    return _section("scores", "Global scores",
                    f"Each score beside its null, its value over {NULL_PERMUTATIONS} random re-pairings of the "
                    "fine-tuned rows (what unrelated spaces of the same shape would give), and, for the per-point "
                    "means, a 95 % bootstrap interval over images. A score near its null means nothing was "
                    "preserved.", body)


def _maps_section(report: DriftReport, maps: tuple[np.ndarray, np.ndarray], config: DriftConfig,
                  drifted: list[int]) -> str:
    figure = _maps_figure(report, maps, config, drifted)
    div = figure.to_html(include_plotlyjs=True, full_html=False, div_id="maps-figure",
                         config={"displaylogo": False, "responsive": True})
    traces_per_map = len(figure.data) // 2
    return _section("maps", "Maps",
                    f"UMAP maps of the pre-trained and fine-tuned features, coloured by class "
                    f"({PLACEMENT[config.projection]}; seed {config.seed}). Hover a point for its drift: the same "
                    f"image lights up in the other map. Numbered rings are the most drifted points below. "
                    f"Positions are only a guide: the scores come from the full feature spaces.",
                    f"{div}\n<script>{LINKED_HOVER_JS % traces_per_map}</script>")


def _maps_figure(report: DriftReport, maps: tuple[np.ndarray, np.ndarray], config: DriftConfig,
                 drifted: list[int]):
    """Both maps side by side: one trace per class in each (the legend hides a class in both), the
    drifted points ringed and numbered; traces are in the same order in both maps, so a trace's twin
    is ``curveNumber ± traces per map`` and points keep their positions (the linked hover uses that)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [_e(name) for name in report.class_names]
    hover = [f"id {i} · {names[int(c)]}<br>overlap@{report.k} {o:.2f} · L2 drift {_number(d)}"
             for i, (c, o, d) in enumerate(zip(report.labels, report.overlap, report.l2_drift))]
    scatter = go.Scatter if report.n <= SVG_POINTS else go.Scattergl
    size = 7 if report.n <= 500 else 5 if report.n <= 5000 else 3
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.03,
                        subplot_titles=(f"Pre-trained · {_e(config.pretrained)}", f"Fine-tuned · {_e(config.finetuned)}"))
    for col, coords in enumerate(maps, start=1):
        coords = np.asarray(coords, dtype=np.float64)
        for c, name in enumerate(names):
            rows = np.flatnonzero(report.labels == c)
            if len(rows):
                fig.add_trace(scatter(x=coords[rows, 0], y=coords[rows, 1], mode="markers", name=name,
                                      legendgroup=f"class-{c}", showlegend=col == 1,
                                      text=[hover[i] for i in rows], hovertemplate="%{text}<extra></extra>",
                                      marker=dict(size=size, color=PALETTE[c % len(PALETTE)], opacity=0.8)),
                              row=1, col=col)
        fig.add_trace(go.Scatter(x=coords[drifted, 0], y=coords[drifted, 1], mode="markers+text",
                                 name="most drifted", legendgroup="drifted", showlegend=col == 1, hoverinfo="skip",
                                 text=[str(rank) for rank in range(1, len(drifted) + 1)], textposition="top center",
                                 textfont=dict(size=11, color="#111"),
                                 marker=dict(size=size + 8, symbol="circle-open", color="#111", line=dict(width=2))),
                      row=1, col=col)
    fig.update_layout(template="plotly_white", height=560, margin=dict(l=10, r=10, t=40, b=10),
                      hovermode="closest", legend=dict(title=dict(text="class (click to hide)"), itemsizing="constant"),
                      font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif"))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(scaleanchor="x", row=1, col=1)
    fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    return fig


def _drifted_section(report: DriftReport, images: ImageSet, drifted: list[int]) -> str:
    uris: dict[int, str] = {}

    def uri(i: int) -> str | None:
        """Image ``i`` as a data URI; None when the points have no images (``rows:N``: embedding files only)."""
        if not images.has_images:
            return None
        if i not in uris:
            uris[i] = thumbnail_uri(images, i)
        return uris[i]

    cards = "".join(_drifted_card(report, images, rank, i, uri) for rank, i in enumerate(drifted, start=1))
    no_images = ("" if images.has_images else " These points come from embedding files without images, so each is "
                 "shown by its row id instead of a thumbnail.")
    return _section("drifted", "Most drifted points",
                    f"The {len(drifted)} images whose neighbourhoods changed most (lowest overlap@{report.k}, then "
                    f"largest L2 drift), each with its {report.k} nearest neighbours before and after fine-tuning, "
                    f"nearest first. Borders: <span class=\"key kept\">kept</span> in both spaces, "
                    f"<span class=\"key lost\">lost</span> (before only), <span class=\"key gained\">gained</span> "
                    f"(after only).{no_images}", f"<div class=\"cards\">{cards}</div>")


def _picture(uri: str | None, i: int, extra: str = "") -> str:
    """An image tag, or (no images) a box holding the row id in its place."""
    if uri is None:
        return f"<span class=\"noimage\"{extra}>{i}</span>"
    return f"<img src=\"{uri}\" alt=\"image {i}\"{extra}>"


def _drifted_card(report: DriftReport, images: ImageSet, rank: int, i: int, uri) -> str:
    before, after = report.graph_a, report.graph_b
    kept = set(before.indices[i].tolist()) & set(after.indices[i].tolist())

    def row(label: str, graph, changed: str) -> str:
        cells = "".join(_thumb(images, int(j), uri, "kept" if int(j) in kept else changed, float(s))
                        for j, s in zip(graph.indices[i], graph.similarities[i]))
        return f"<div class=\"row\"><span class=\"rowlabel\">{label}</span><div class=\"thumbs\">{cells}</div></div>"

    return (f"<article class=\"card\">\n<div class=\"focus\">{_picture(uri(i), i)}"
            f"<div><p class=\"rank\">#{rank}</p><p><strong>id {i}</strong> · {_e(images.class_of(i))}</p>"
            f"<p class=\"small\">overlap@{report.k} {report.overlap[i]:.2f} · Jaccard {report.jaccard[i]:.2f}"
            f" · L2 drift {_number(report.l2_drift[i])}</p></div></div>\n"
            f"{row('before (pre-trained)', before, 'lost')}\n{row('after (fine-tuned)', after, 'gained')}\n</article>\n")


def _thumb(images: ImageSet, j: int, uri, status: str, similarity: float) -> str:
    name = _e(images.class_of(j))
    title = f" title=\"id {j} · {name} · {status} · cosine {similarity:.2f}\""
    return f"<figure class=\"thumb {status}\">{_picture(uri(j), j, title)}<figcaption>{name}</figcaption></figure>"


def _classes_section(report: DriftReport) -> str:
    table = report.class_table.sort_values("overlap_at_k")
    rows = "".join(
        f"<tr><th scope=\"row\">{_e(r['class'])}</th><td class=\"num\">{int(r['n'])}</td>"
        f"<td class=\"num bar\" style=\"--share: {100 * r['overlap_at_k']:.1f}%\">{r['overlap_at_k']:.3f}</td>"
        f"<td class=\"num\">{r['same_class_a']:.3f}</td><td class=\"num\">{r['same_class_b']:.3f}</td>"
        f"<td class=\"num\">{r['composition_tv']:.3f}</td></tr>" for _, r in table.iterrows())
    body = (f"<table class=\"classes\">\n<thead><tr><th>class</th><th class=\"num\">images</th>"
            f"<th class=\"num\">overlap@{report.k}</th><th class=\"num\">same-class neighbours<br>before</th>"
            f"<th class=\"num\"><br>after</th><th class=\"num\">change in<br>neighbour classes</th></tr></thead>\n"
            f"<tbody>{rows}</tbody>\n</table>")
    return _section("classes", "Class drift",
                    "Per class, most changed first: the mean overlap of its images, the share of their neighbours "
                    "from the same class before and after fine-tuning, and how far the mix of their neighbours' "
                    "classes moved (total variation: 0 = the same mix, 1 = disjoint).", body)


def _provenance_section(report: DriftReport, images: ImageSet, config: DriftConfig, versions: dict[str, str]) -> str:
    from .encoders import canonical_spec, spec_fingerprint

    items = []
    for role, spec in (("pre-trained encoder", config.pretrained), ("fine-tuned encoder", config.finetuned)):
        resolved = canonical_spec(spec)
        key = spec_fingerprint(spec, config.image_size or None)
        detail = f" = <code>{_e(resolved)}</code>" if resolved != spec.strip() else ""
        detail += f"<br><span class=\"small\">weights content key {_e(key)}</span>" if key else ""
        detail += _run_line(resolved)
        items.append(f"<dt>{role}</dt><dd><code>{_e(spec)}</code>{detail}</dd>")
    skipped = f", {len(images.skipped)} files skipped (not images or unreadable)" if images.skipped else ""
    noun = "images" if images.has_images else "points (rows of embedding files, no images)"
    items.append(f"<dt>images</dt><dd><code>{_e(config.data)}</code>: {report.n:,} {noun}, {len(report.class_names)} "
                 f"classes{skipped}<br><span class=\"small\">content fingerprint {_e(images.fingerprint)}</span></dd>")
    versions_rows = "".join(f"<tr><th scope=\"row\">{_e(name)}</th><td>{_e(version)}</td></tr>"
                            for name, version in versions.items())
    body = (f"<dl>{''.join(items)}</dl>\n<h3>Versions</h3>\n<table class=\"versions\">{versions_rows}</table>\n"
            f"<h3>Config</h3>\n<p class=\"small\">The <code>DriftConfig</code> that produced this report, and "
            f"the command that writes it again:</p>\n<pre>{_e(json.dumps(config.to_dict(), indent=2))}</pre>\n"
            f"<pre class=\"command\">{_e(command_line(config))}</pre>")
    return _section("provenance", "How this report was made",
                    "The exact specs (and the content keys of the weights they resolved to), the images, the "
                    "software versions and the full config.", body)


def _run_line(spec: str) -> str:
    """For a proxyfda run: how it was fine-tuned, in one line; empty for any other spec."""
    if not spec.startswith("run:"):
        return ""
    from .runs import Run

    try:
        run = Run.open(spec.removeprefix("run:"))
    except ProxyFDAError:
        return ""
    c = run.config
    preset = c.reg_options.get("preset")
    method = f"{c.method} ({preset})" if preset else c.method
    steps = f"{c.steps} steps" if c.steps else "the method's default steps"
    return (f"<br><span class=\"small\">a proxyfda run: {_e(method)}, {_e(steps)} on <code>{_e(c.data)}</code> from "
            f"<code>{_e(c.base_encoder)}</code>, status {_e(run.status)}</span>")


# ---------------------------------------------------------------------------------------------
# the page's script and style

#: hovering a point in one map shows the same image in the other; %d is the number of traces per map
LINKED_HOVER_JS = """
window.addEventListener("load", function () {
  var gd = document.getElementById("maps-figure");
  if (!gd || !window.Plotly || !gd.on) { return; }
  var half = %d, linking = false;
  gd.on("plotly_hover", function (event) {
    if (linking || event.points.length !== 1) { return; }
    var p = event.points[0], first = p.curveNumber < half;
    var a = first ? p.curveNumber : p.curveNumber - half;
    linking = true;
    Plotly.Fx.hover(gd, [{curveNumber: a, pointNumber: p.pointNumber},
                         {curveNumber: a + half, pointNumber: p.pointNumber}], ["xy", "x2y2"]);
    linking = false;
  });
});
"""

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #e3e6ec; --bg: #f7f8fa; --kept: #54a24b; --lost: #e45756;
        --gained: #4c78a8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 40px; }
header { margin-bottom: 8px; }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted); margin: 0; }
h1 { font-size: 28px; margin: 4px 0 6px; }
h2 { font-size: 20px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.specs { font-size: 16px; margin: 0 0 8px; }
.specs .pre, .specs .ft { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; padding: 1px 6px;
                          border-radius: 4px; background: #eef1f6; }
.lede { font-size: 17px; margin: 6px 0 12px; }
.note { background: #fff7e0; border: 1px solid #f0dca0; padding: 8px 12px; border-radius: 6px; }
nav a { margin-right: 16px; color: var(--gained); text-decoration: none; font-weight: 600; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
          margin: 18px 0; }
p.what { color: var(--muted); margin: 0 0 14px; max-width: 80ch; }
.small { color: var(--muted); font-size: 13px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
pre { background: #f3f5f8; padding: 12px; border-radius: 6px; overflow-x: auto; }
pre.command { white-space: pre-wrap; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { font-size: 13px; color: var(--muted); font-weight: 600; vertical-align: bottom; }
tbody th { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.what { color: var(--muted); font-size: 13px; }
table.versions, table.classes { width: auto; }
table.classes td, table.classes th { padding-left: 18px; }
td.bar { min-width: 150px; background: linear-gradient(90deg, #dbe7f3 var(--share), transparent var(--share)); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.focus { display: flex; gap: 14px; align-items: center; margin-bottom: 8px; }
.focus img { width: 72px; height: 72px; image-rendering: pixelated; border-radius: 6px; border: 1px solid var(--line); }
.focus p { margin: 0; }
.rank { font-size: 20px; font-weight: 700; }
.row { margin-top: 6px; }
.rowlabel { display: block; font-size: 12px; color: var(--muted); margin-bottom: 2px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; }
figure.thumb { margin: 0; width: 48px; text-align: center; }
figure.thumb img { width: 48px; height: 48px; image-rendering: pixelated; border: 3px solid; border-radius: 5px; }
.noimage { display: flex; align-items: center; justify-content: center; box-sizing: border-box; width: 72px;
  height: 72px; border: 1px solid var(--line); border-radius: 6px; font-size: 13px; color: var(--muted); }
figure.thumb .noimage { width: 48px; height: 48px; border: 3px solid; font-size: 11px; }
figure.thumb figcaption { font-size: 10px; color: var(--muted); overflow: hidden; text-overflow: ellipsis;
                          white-space: nowrap; }
figure.kept img, figure.kept .noimage { border-color: var(--kept); }
figure.lost img, figure.lost .noimage { border-color: var(--lost); }
figure.gained img, figure.gained .noimage { border-color: var(--gained); }
.key { padding: 0 6px; border: 2px solid; border-radius: 4px; }
.key.kept { border-color: var(--kept); } .key.lost { border-color: var(--lost); } .key.gained { border-color: var(--gained); }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
"""
