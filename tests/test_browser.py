"""The real app in a real browser: `streamlit run` on the embedded default, driven by Playwright
through Debian's Chromium. The session cache is prepared first (default fine-tune, features,
maps), as `proxyfda prepare` does, so the browser part sees a warm start. Screenshots of every page
land in screenshots/ (git-ignored) for a person to look at."""

from __future__ import annotations

import pytest

from browser import SCREENSHOTS, app_server, chromium_page, seconds_to_maps

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url():
    from proxyfda.cli import main

    assert main(["prepare"]) == 0
    with app_server() as url:
        yield url


def test_default_app_renders_both_maps_and_links_a_lasso(app_url):
    with chromium_page() as page:
        seconds_to_maps(page, app_url, timeout_ms=180_000)
        page.screenshot(path=str(SCREENSHOTS / "drift_explorer.png"), full_page=True)
        assert page.get_by_text("Fine-tuned", exact=True).count() >= 1
        assert page.get_by_role("button", name="Deploy").count() == 0  # a local tool deploys nothing
        # each map draws the 2,000 default points in WebGL
        lengths = page.evaluate("[...document.querySelectorAll('.stPlotlyChart .js-plotly-plot')]"
                                ".slice(0, 2).map(g => g._fullData[0]._length)")
        assert lengths == [2000, 2000]
        assert page.get_by_text("random baseline k/(N−1) = 0.0050").count() == 1

        # a lasso on the pre-trained map selects rows that the fine-tuned map then highlights
        drag = page.locator(".stPlotlyChart .js-plotly-plot").first.locator(".nsewdrag").first.bounding_box()
        corners = [(0.03, 0.03), (0.97, 0.03), (0.97, 0.97), (0.03, 0.97), (0.03, 0.04)]
        xy = [(drag["x"] + drag["width"] * fx, drag["y"] + drag["height"] * fy) for fx, fy in corners]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for x, y in xy[1:]:
            page.mouse.move(x, y, steps=10)
        page.mouse.up()
        page.wait_for_function(
            "(() => { const g = document.querySelectorAll('.stPlotlyChart .js-plotly-plot')[1];"
            " const s = g && g.data[0].selectedpoints; return s && s.length > 100; })()", timeout=60_000)
        page.get_by_text("Selection", exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "drift_explorer_lasso.png"), full_page=True)
