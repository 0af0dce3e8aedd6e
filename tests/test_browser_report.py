"""The HTML drift report in a real browser with the network cut off: it must draw both maps, every
thumbnail and the linked hover from the file alone. The page is the small synthetic analysis of
test_report_html.py; a screenshot lands in screenshots/drift_report.png."""

from __future__ import annotations

import pytest

from browser import SCREENSHOTS, chromium_page
from proxyfda.report_html import report_html
from test_report_html import synthetic_analysis

pytestmark = pytest.mark.browser

#: per map (subplot xy: pre-trained, x2y2: fine-tuned), how many points plotly drew as SVG markers
POINTS_DRAWN = ("['xy', 'x2y2'].map(s => document.querySelectorAll("
                "`#maps-figure .subplot.${s} .scatterlayer .trace:not(:last-child) path.point`).length)")


def test_the_report_opens_offline_with_both_maps_and_every_thumbnail(tmp_path):
    analysis = synthetic_analysis()
    report = analysis[0]
    path = tmp_path / "report.html"
    path.write_text(report_html(*analysis))
    requested = []
    with chromium_page(width=1400, height=1000) as page:
        page.context.set_offline(True)
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else (requested.append(route.request.url), route.abort()))
        page.goto(path.as_uri())
        page.wait_for_function(f"{POINTS_DRAWN}.every(n => n > 0)", timeout=20_000)
        assert page.evaluate(POINTS_DRAWN) == [report.n, report.n]  # every image, in each map
        assert page.locator("#maps-figure .main-svg").count() >= 1
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("article.card").count() == 12

        # hovering an image in the pre-trained map shows the same image's label in the fine-tuned one too
        point = page.locator("#maps-figure .subplot.xy .scatterlayer .trace").first.locator("path.point").first
        point.scroll_into_view_if_needed()
        point.hover(force=True)
        page.wait_for_function("document.querySelectorAll('#maps-figure .hoverlayer .hovertext').length === 2",
                               timeout=5_000)
        labels = page.evaluate("[...document.querySelectorAll('#maps-figure .hoverlayer .hovertext')]"
                               ".map(t => t.textContent)")
        assert len(set(labels)) == 1 and labels[0].startswith("id "), labels
        page.mouse.move(0, 0)
        page.screenshot(path=str(SCREENSHOTS / "drift_report.png"), full_page=True)
    assert requested == []  # nothing tried to leave the machine
