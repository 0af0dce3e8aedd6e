"""The self-contained HTML drift report: the library page, `proxyfda report`, and the app's Export button.

The analysis is small and synthetic (60 digits, features with class structure, linear maps instead of
UMAP) so that everything here runs in seconds; a class name and a spec carry ``<script>`` to prove
every user string is escaped. The browser test (tests/test_browser_report.py) opens the same page.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
import shutil
import shlex

import numpy as np
import pytest

from proxyfda.config import DriftConfig
from proxyfda.drift import calibrate, compute_drift
from proxyfda.errors import ProxyFDAError
from proxyfda.projection import linear_map
from proxyfda.report_html import (SCORE_INFO, calibration_display, check_output, command_line, report_file_name,
                                  report_html)

HOSTILE = "<script>alert('x')</script>"
CONFIG = DriftConfig(finetuned=f"run:/nowhere/{HOSTILE}", data="digits:test", n=60, k=5, image_size=32)


def synthetic_features(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pre-trained features clustered by class, and a fine-tuned version that moved them part of the way."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(labels.max()) + 1, 16))
    x_a = centres[labels] + 0.6 * rng.normal(size=(len(labels), 16))
    return x_a, x_a + 0.8 * rng.normal(size=x_a.shape)


def synthetic_analysis():
    """(report, images, maps, calibration, config) of 60 digits, one class named with a script tag."""
    from proxyfda.data import load_images

    images = load_images("digits:test", n=60)
    names = list(images.class_names)
    names[3] = HOSTILE
    images = dataclasses.replace(images, class_names=names)
    x_a, x_b = synthetic_features(images.labels)
    report = compute_drift(x_a, x_b, images.labels, images.class_names, CONFIG.k)
    maps = (linear_map(x_a), linear_map(x_b, fit_on=x_a))
    return report, images, maps, calibrate(report, x_a, x_b), CONFIG


@pytest.fixture(scope="module")
def analysis():
    return synthetic_analysis()


@pytest.fixture(scope="module")
def page(analysis) -> str:
    return report_html(*analysis)


def test_the_scores_appear_with_their_nulls_and_intervals(analysis, page):
    report, _, _, calibration, _ = analysis
    shown = calibration_display(calibration)
    for key in SCORE_INFO:
        assert f"{report.metrics[key]:.3f}" in page, key
    for key, row in shown.iterrows():
        assert html.escape(row["null (mean ± sd)"]) in page and html.escape(row["95 % interval"]) in page, key
    assert f"k/(N−1) = {report.metrics['overlap_at_k_random_baseline']:.4f}" in page
    assert f"<strong>{report.metrics['overlap_at_k_mean']:.1%}</strong>" in page  # the headline sentence


def test_each_score_row_holds_its_own_value_null_and_interval(analysis, page):
    """Row by row: the score's label (with k), its value, the mean ± sd of its null and its bootstrap interval,
    all read from the calibration table directly; scores without per-point values have no interval."""
    report, _, _, calibration, _ = analysis
    cell = r'<td class="num">([^<]+)</td>'
    rows = {label: cells for label, *cells in re.findall(rf'<tr><th scope="row">([^<]+)</th>{cell * 3}', page)}
    table = calibration.set_index("score")
    for key, (label, _) in SCORE_INFO.items():
        value, null, interval = rows[html.escape(label.replace("@k", "@5"))]
        assert value == f"{report.metrics[key]:.3f}", key
        if key in table.index:
            assert null == f"{table.loc[key, 'null_mean']:.3f} ± {table.loc[key, 'null_sd']:.3f}", key
            low, high = table.loc[key, "ci_low"], table.loc[key, "ci_high"]
            assert interval == ("—" if np.isnan(low) else f"{low:.3f} – {high:.3f}"), key
        else:
            assert (null, interval) == ("—", "—"), key


def test_a_score_of_exactly_zero_is_shown_as_zero():
    """A space compared with itself: Procrustes disparity and L2 drift are 0 (a value, not "not computed")."""
    from proxyfda.data import load_images

    images = load_images("digits:test", n=60)
    x_a = synthetic_features(images.labels)[0]
    report = compute_drift(x_a, x_a, images.labels, images.class_names, CONFIG.k)
    page = report_html(report, images, (linear_map(x_a), linear_map(x_a)), calibrate(report, x_a, x_a), CONFIG)
    rows = dict(re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', page))
    assert (rows["Procrustes disparity"], rows["mean L2 drift"], rows["overlap@5"]) == ("0.000", "0.000", "1.000")


def test_each_class_row_holds_its_own_figures(analysis, page):
    report = analysis[0]
    for _, row in report.class_table.iterrows():
        cells = (f'<th scope="row">{html.escape(str(row["class"]))}</th><td class="num">{int(row["n"])}</td>'
                 f'<td class="num bar" style="--share: {100 * row["overlap_at_k"]:.1f}%">{row["overlap_at_k"]:.3f}</td>'
                 f'<td class="num">{row["same_class_a"]:.3f}</td><td class="num">{row["same_class_b"]:.3f}</td>'
                 f'<td class="num">{row["composition_tv"]:.3f}</td>')
        assert cells in page, row["class"]
    order = re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">\d+</td><td class="num bar"', page)
    assert order == [html.escape(str(c)) for c in report.class_table.sort_values("overlap_at_k")["class"]]


def test_the_config_specs_and_versions_that_made_it_are_recorded(page):
    import platform

    assert html.escape(json.dumps(CONFIG.to_dict(), indent=2)) in page
    assert html.escape(command_line(CONFIG)) in page
    assert f"<th scope=\"row\">python</th><td>{platform.python_version()}</td>" in page
    for name in ("proxyfda", "torch", "open_clip_torch", "umap-learn", "plotly"):
        assert f"<th scope=\"row\">{name}</th>" in page, name
    assert "faiss-cpu" in page or "faiss-gpu" in page


def test_plotly_is_inlined_and_nothing_is_fetched_from_the_network(page):
    import plotly.offline

    assert plotly.offline.get_plotlyjs()[:2000] in page  # the library itself, not a link to it
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\b(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert 'id="maps-figure"' in page
    assert 3e6 < len(page.encode()) < 8e6  # plotly.js is most of it


def test_every_user_string_is_escaped(page):
    assert "<script>alert" not in page
    assert html.escape(HOSTILE) in page  # class name and spec, shown as text


def marked(slot: str) -> str:
    """A string that is markup unless escaped, naming where it was put."""
    return f"<b id={slot}>"


def test_every_place_a_user_string_reaches_is_escaped(analysis, tiny_run, tmp_path):
    """Each slot a user fills (every spec, the data, the labels file, class names, and the fields of a run's
    config that the page quotes) holds its own piece of markup: none may reach the page as markup, and
    each must be shown, escaped, where it belongs."""
    report, images, maps, calibration, _ = analysis
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    values = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**values, "data": marked("run-data"),
                                                 "base_encoder": marked("run-base")}))
    config = DriftConfig(pretrained=marked("pretrained"), finetuned=f"run:{run}", data=marked("data"),
                         compare=marked("compare"), labels=marked("labels"), n=60, k=5, image_size=32)
    names = list(images.class_names)
    names[5] = marked("class")
    images = dataclasses.replace(images, class_names=names)
    report = dataclasses.replace(report, class_names=names, class_table=report.class_table.assign(
        **{"class": [marked("class") if c == images.class_names[5] else c for c in report.class_table["class"]]}),
        metrics={**report.metrics, "knn_note": marked("note")})
    page = report_html(report, images, maps, calibration, config)
    assert re.findall(r"<b id=", page) == []
    for slot in ("pretrained", "data", "compare", "labels", "class", "note", "run-data", "run-base"):
        assert html.escape(marked(slot)) in page, slot


def test_the_maps_carry_every_point_with_its_drift_in_the_hover(analysis, page):
    report = analysis[0]
    dot = r"(?:·|\\u00b7)"  # plotly writes "·" as is (with orjson installed) or escaped (without)
    hovers = re.findall(rf"id (\d+) {dot} [^\"]*overlap@5 (\d\.\d\d) {dot} L2 drift", page)
    assert len(hovers) == 2 * report.n  # one per point in each map
    assert {int(i): float(o) for i, o in hovers} == {i: round(float(o), 2) for i, o in enumerate(report.overlap)}


def test_the_most_drifted_points_come_with_their_neighbours_as_embedded_pngs(analysis, page):
    from PIL import Image

    report, images = analysis[:2]
    drifted = [int(i) for i in report.most_drifted(12)["id"]]
    cards = page.split('<article class="card">')[1:]
    assert len(cards) == 12
    for rank, (card, i) in enumerate(zip(cards, drifted), start=1):
        assert f"#{rank}</p><p><strong>id {i}</strong>" in card
        sources = re.findall(r'src="data:image/png;base64,([^"]+)"', card)
        assert len(sources) == 1 + 2 * report.k  # the image, its neighbours before and after
        shown = [int(j) for j in re.findall(r'alt="image (\d+)"', card)]
        assert shown == [i, *report.graph_a.indices[i], *report.graph_b.indices[i]]
        shared = len(set(report.graph_a.indices[i]) & set(report.graph_b.indices[i]))  # the card's own figures
        assert f"overlap@5 {shared / 5:.2f} · Jaccard {shared / (10 - shared):.2f} · L2 drift" in card
    first = re.search(r'src="data:image/png;base64,([^"]+)"', cards[0]).group(1)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(first))).convert("RGB"))
    np.testing.assert_array_equal(pixels, images.thumbnail(drifted[0]))
    lost = len(report.neighbours(drifted[0])["lost"])
    assert cards[0].count('class="thumb lost"') == lost and cards[0].count('class="thumb gained"') == lost


class _Pictures:
    """What the report reads of an image set: thumbnails (a 100 × 50 gradient) and class names."""

    has_images = True
    class_names = ["a<b>", "b"]
    labels = np.array([0, 1])

    def thumbnail(self, index: int, size: int = 64) -> np.ndarray:
        ramp = np.linspace(0, 255, 100 * 50 * 3).reshape(50, 100, 3)
        return (ramp if index == 0 else 255 - ramp).astype(np.uint8)

    def class_of(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]


def test_a_thumbnail_is_its_image_shrunk_to_at_most_64_pixels_a_side():
    from PIL import Image

    from proxyfda.report_html import thumbnail_uri

    for size, shape in ((64, (32, 64, 3)), (20, (10, 20, 3))):
        uri = thumbnail_uri(_Pictures(), 1, size=size)
        assert uri.startswith("data:image/png;base64,")
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
        expected = Image.fromarray(_Pictures().thumbnail(1))
        expected.thumbnail((size, size))
        assert pixels.shape == shape
        np.testing.assert_array_equal(pixels, np.asarray(expected))


def test_a_thumbnail_of_an_image_file_is_read_at_the_size_shown(tmp_path):
    """A set read from files is decoded at the thumbnail's own size (shorter side resized, centre square), not
    at the 64 px default and shrunk afterwards, which blurs a second time."""
    from PIL import Image

    from proxyfda.data import load_images
    from proxyfda.report_html import thumbnail_uri

    (tmp_path / "cats").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cats" / "a.png")
    uri = thumbnail_uri(load_images(f"folder:{tmp_path}"), 0, size=24)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    resized = Image.fromarray(noise).resize((32, 24), Image.Resampling.BILINEAR)  # 80×60 → shorter side 24
    np.testing.assert_array_equal(pixels, np.asarray(resized)[:, 4:28])


def test_a_focus_picture_is_its_image_or_its_id_in_a_box():
    from proxyfda.report_html import _picture

    assert _picture("data:x/3", 3) == '<img src="data:x/3" alt="image 3">'
    assert _picture(None, 3) == '<span class="noimage">3</span>'


def test_a_neighbour_is_shown_with_its_id_class_status_and_cosine():
    from proxyfda.report_html import _thumb

    figure = _thumb(_Pictures(), 0, lambda j: f"data:x/{j}", "lost", 0.4567)
    assert figure == ('<figure class="thumb lost"><img src="data:x/0" alt="image 0" title="id 0 · a&lt;b&gt; · lost · '
                      'cosine 0.46"><figcaption>a&lt;b&gt;</figcaption></figure>')
    without = _thumb(_Pictures(), 1, lambda j: None, "kept", 1.0)
    assert without == ('<figure class="thumb kept"><span class="noimage" title="id 1 · b · kept · cosine 1.00">1'
                       '</span><figcaption>b</figcaption></figure>')


def test_class_drift_lists_every_class(analysis, page):
    report = analysis[0]
    for _, row in report.class_table.iterrows():
        assert f"<th scope=\"row\">{html.escape(str(row['class']))}</th><td class=\"num\">{int(row['n'])}</td>" in page


def test_maps_of_other_images_are_refused(analysis):
    report, images, maps, calibration, config = analysis
    with pytest.raises(ProxyFDAError, match="build all three from the same images"):
        report_html(report, images, (maps[0][:10], maps[1][:10]), calibration, config)


def test_command_line_reproduces_the_config():
    from proxyfda.cli import _config_from_args, build_parser

    args = build_parser().parse_args(shlex.split(command_line(CONFIG))[1:])
    assert _config_from_args(DriftConfig, args) == CONFIG and args.out == "drift-report.html"


def test_report_file_name_is_safe():
    assert report_file_name(CONFIG) == "drift-report-script-digits-test.html"  # the folder name after the last /
    named = dataclasses.replace(CONFIG, finetuned="run:/x/Naive-S0", data="folder:/x/BOX/")
    assert report_file_name(named) == "drift-report-Naive-S0-folder-x-BOX.html"  # capitals kept, no "-" at the end
    long = report_file_name(dataclasses.replace(CONFIG, data="y" * 300))
    assert long == ("drift-report-script-" + "y" * 300)[:120] + ".html"  # at most 120 characters before .html


def test_a_folder_or_an_unwritable_path_is_refused_before_any_work(tmp_path):
    with pytest.raises(ProxyFDAError, match="is a folder: give a file name"):
        check_output(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ProxyFDAError, match="cannot create the folder"):
        check_output(tmp_path / "file" / "report.html")
    assert check_output(tmp_path / "new" / "deeper" / "r.html").parent.is_dir()


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.fixture
def light_route(monkeypatch):
    """`proxyfda report`'s heavy steps replaced: synthetic features instead of two encoders, linear maps
    instead of UMAP. Images, drift, calibration and the page are the real ones."""
    from proxyfda import drift, report_html

    monkeypatch.setattr(drift, "drift_features", lambda config, images, progress=None: synthetic_features(images.labels))
    monkeypatch.setattr(report_html, "project_pair",
                        lambda x_a, x_b, method, seed, progress=None: (linear_map(x_a), linear_map(x_b, fit_on=x_a)))


def test_report_command_writes_one_html_file(light_route, tmp_path, capsys):
    from proxyfda.cli import main

    out = tmp_path / "out" / "report.html"
    code = main(["report", "--pretrained", "efficientnet-lite0", "--finetuned", "efficientnet-lite0",
                 "--data", "digits:test", "--n", "60", "--k", "5", "--out", str(out)])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "overlap@5" in page and "data:image/png;base64," in page
    assert html.escape('"data": "digits:test"') in page and list(tmp_path.joinpath("out").iterdir()) == [out]


def test_write_report_maps_as_the_config_says_with_steady_progress(light_route, monkeypatch, tmp_path):
    """write_report: the maps come from the config's projection and seed, the page shows the 12 most drifted
    points, the progress runs from 0 to 1, and the report's folders are made as needed."""
    from proxyfda import report_html as module
    from test_drift import steady

    asked = []
    light = module.project_pair

    def project(x_a, x_b, method, seed, progress=None):
        asked.append((method, seed))
        progress("Fitting the pre-trained map")
        return light(x_a, x_b, method, seed)

    monkeypatch.setattr(module, "project_pair", project)
    calls = []
    config = DriftConfig(data="digits:test", n=60, k=5, projection="independent", seed=3)
    out = module.write_report(config, tmp_path / "a" / "b" / "report.html",
                              progress=lambda message, fraction: calls.append((message, fraction)))
    assert asked == [("independent", 3)]
    steady(calls)
    after_drift = calls[[message for message, _ in calls].index("Comparing each score with 20 random re-pairings of "
                                                                "the images"):]
    assert after_drift == [("Comparing each score with 20 random re-pairings of the images", 0.66),
                           ("Projecting both spaces with UMAP", 0.72), ("Fitting the pre-trained map", 0.75),
                           ("Writing the report", 0.97), ("Done", 1.0)]
    assert out.read_text().count('<article class="card">') == 12
    fewer = module.write_report(config, tmp_path / "fewer.html", top=3)  # every stage from its cache now
    assert fewer.read_text().count('<article class="card">') == 3


def test_report_takes_the_drift_options_and_defaults_to_the_embedded_default():
    from proxyfda.cli import _config_from_args, build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    flags = {name: {s for a in commands[name]._actions for s in a.option_strings} for name in ("drift", "report")}
    assert flags["report"] == flags["drift"]
    assert _config_from_args(DriftConfig, parser.parse_args(["report", "--out", "r.html"])) == DriftConfig()


def test_report_to_a_folder_exits_2_before_any_work(monkeypatch, tmp_path, capsys):
    from proxyfda import drift
    from proxyfda.cli import main

    monkeypatch.setattr(drift, "load_drift_images", lambda config: pytest.fail("worked before checking --out"))
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "is a folder: give a file name" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the app


def test_the_drift_explorer_exports_the_analysis_on_screen(monkeypatch, tmp_path):
    """The Export tab's HTML button gives the page of the report, maps and calibration the app shows."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.testing.v1 import AppTest

    from app import pipeline
    from app.session import TAB_KEY
    from proxyfda import projection
    from test_app import PAGE, SMALL

    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    monkeypatch.setattr(pipeline, "load_features", lambda config, images: synthetic_features(images.labels))
    monkeypatch.setattr(projection, "cached_pair",
                        lambda x_a, x_b, **options: (linear_map(x_a), linear_map(x_b, fit_on=x_a)))
    deferred = {}
    add_deferred = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        deferred[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    at = AppTest.from_file(PAGE, default_timeout=120)
    state = {**SMALL, "drift.cfg.finetuned": "efficientnet-lite0", TAB_KEY: "Export"}
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception and not at.error
    assert "Drift report (HTML)" in [b.label for b in at.get("download_button")]
    name = "drift-report-efficientnet-lite0-digits-test.html"
    page = deferred[name]()  # what a click downloads
    shown = next(m.value for m in at.metric if m.label == "overlap@5")
    assert page.startswith("<!doctype html>") and f'<td class="num">{shown}</td>' in page  # the panel's score
    assert page.count('<article class="card">') == 12 and 'id="maps-figure"' in page


def test_the_versions_recorded_are_the_installed_ones():
    """Python's version, then each listed package's installed version from its metadata; a package that is
    not installed (faiss-gpu on a CPU machine) is left out and the rest are still read."""
    import platform
    from importlib import metadata

    from proxyfda.report_html import VERSIONED, environment_versions

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    expected = {"python": platform.python_version()}
    expected.update({name: installed(name) for name in VERSIONED if installed(name) is not None})
    assert environment_versions() == expected
    assert expected["numpy"] == np.__version__
