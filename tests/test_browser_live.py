"""The Live fine-tune page in a real browser: start a short run from the page, watch the curves grow,
press Stop, open the run in the Drift Explorer and move the Over-time step slider. Screenshots land in
screenshots/."""

from __future__ import annotations

import pytest

from browser import MAPS_DRAWN, SCREENSHOTS, app_server, chromium_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# every 10 steps: enough evaluations to watch the curve grow within seconds, and a stopped run's timeline of a
# few dozen snapshots (every 4 steps gave 50 and more, and the Over-time tab took minutes to compute them)
LINK = "live_finetune?method=naive&data=digits:train&eval_data=digits:test&image_size=32&steps=400&eval_every=10"
#: points on the accuracy curve (the live figure's eval trace)
EVAL_POINTS = ("(() => { const g = document.querySelector('.stPlotlyChart .js-plotly-plot');"
               " if (!g || !g._fullData) return 0; const t = g._fullData.find(d => d.name === 'accuracy');"
               " return t ? t._length : 0; })()")


def test_start_watch_stop_and_play_a_run(tmp_path):
    with app_server(env={"PROXYFDA_RUNS": str(tmp_path)}) as url, chromium_page(height=1400) as page:
        page.goto(f"{url}/{LINK}")
        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_function(f"{EVAL_POINTS} >= 2", timeout=300_000, polling=250)
        first = page.evaluate(EVAL_POINTS)
        page.wait_for_function(f"{EVAL_POINTS} >= {first + 2}", timeout=300_000, polling=250)  # the curve grows
        assert page.get_by_text("left", exact=False).count() >= 1  # progress with an ETA
        page.screenshot(path=str(SCREENSHOTS / "live_finetune_running.png"), full_page=True)

        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Run stopped after", exact=False).wait_for(timeout=120_000)
        page.wait_for_function("(() => { const t = document.querySelector('[data-testid=\"stDataFrame\"]');"
                               " return t && t.getBoundingClientRect().height > 60; })()", timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "live_finetune_stopped.png"), full_page=True)
        (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]

        page.get_by_role("button", name="Open in the Drift Explorer").click()
        # the Live page draws plots too (curves, the trade-off sweep): first wait until the page has changed
        page.wait_for_function("location.href.includes('finetuned=')", timeout=120_000, polling=250)
        page.get_by_role("heading", name="Drift Explorer").wait_for(timeout=120_000)  # not the Live page's plots
        page.wait_for_function(MAPS_DRAWN, timeout=900_000, polling=250)
        assert f"finetuned=run%3A{run_dir}".replace("/", "%2F") in page.url or f"run:{run_dir}" in page.url

        page.get_by_role("tab", name="Over time").click()
        frames = ("(() => { const g = [...document.querySelectorAll('.stPlotlyChart .js-plotly-plot')]"
                  ".find(g => g.layout && g.layout.sliders && g.layout.sliders.length); return g || null; })()")
        page.wait_for_function(f"{frames} !== null", timeout=600_000, polling=250)
        n_frames = page.evaluate(f"{frames}.layout.sliders[0].steps.length")
        assert n_frames >= 3
        # drag the step slider's grip to the end of its rail: the map moves to the last snapshot
        page.locator(".slider-rail-rect").first.scroll_into_view_if_needed()
        rail = page.locator(".slider-rail-rect").first.bounding_box()
        grip = page.locator(".slider-grip-rect").first.bounding_box()
        page.mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
        page.mouse.down()
        page.mouse.move(rail["x"] + rail["width"] - 2, grip["y"] + grip["height"] / 2, steps=12)
        page.mouse.up()
        page.wait_for_function(f"{frames}.layout.sliders[0].active === {n_frames - 1}", timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "drift_over_time.png"), full_page=True)
