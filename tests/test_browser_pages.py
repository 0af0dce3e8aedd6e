"""The Proxy debugger and Teaching pages in a real browser: choose an anchor, step the toy, save screenshots."""

from __future__ import annotations

import pytest

from browser import SCREENSHOTS, app_server, chromium_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: number of plotly figures that have drawn at least one trace
CHARTS_DRAWN = ("(() => [...document.querySelectorAll('.stPlotlyChart .js-plotly-plot')]"
                ".filter(g => g._fullData && g._fullData.length).length)()")


def test_proxy_debugger_anchor_and_batch_views(tmp_path):
    with app_server(env={"PROXYFDA_RUNS": str(tmp_path)}) as url, chromium_page(height=1600) as page:
        page.goto(f"{url}/proxy_debugger?anchor=5")
        page.get_by_text("Anchor 5", exact=False).first.wait_for(timeout=600_000)
        page.get_by_text("Proxy positives", exact=False).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # thumbnails
        page.screenshot(path=str(SCREENSHOTS / "proxy_debugger_anchor.png"), full_page=True)
        page.get_by_role("tab", name="Batch").click()
        page.wait_for_function(f"{CHARTS_DRAWN} >= 3", timeout=60_000, polling=250)
        page.screenshot(path=str(SCREENSHOTS / "proxy_debugger_batch.png"), full_page=True)
        page.get_by_role("tab", name="What K, proxies and α change").click()
        page.get_by_text("α", exact=True).click()
        page.get_by_role("button", name="Compare").click()
        page.wait_for_function(f"{CHARTS_DRAWN} >= 4", timeout=300_000, polling=250)
        page.screenshot(path=str(SCREENSHOTS / "proxy_debugger_effects.png"), full_page=True)


def test_teaching_steps_naive_and_proxy_fda(tmp_path):
    with app_server() as url, chromium_page(height=1300) as page:
        page.goto(f"{url}/teaching")
        page.wait_for_function(f"{CHARTS_DRAWN} >= 3", timeout=120_000, polling=250)
        page.screenshot(path=str(SCREENSHOTS / "teaching_start.png"), full_page=True)
        page.get_by_role("button", name="Step ×100").click()
        page.get_by_text("step 100", exact=False).first.wait_for(timeout=120_000)
        page.get_by_role("button", name="Step ×100").click()
        page.get_by_text("step 200", exact=False).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SCREENSHOTS / "teaching_after_200_steps.png"), full_page=True)


def test_drift_explorer_three_way_view(tmp_path):
    """A naive and a FDA fine-tune of the same base, compared in the Drift Explorer's Three-way tab."""
    import dataclasses

    from conftest import TINY_FINETUNE
    from proxyfda.training import finetune

    specs = []
    for method in ("naive", "fda"):
        config = dataclasses.replace(TINY_FINETUNE, method=method, steps=10, batch_size=32,
                                     classes_per_batch=8)
        finetune(config, tmp_path / method)
        specs.append(f"run:{tmp_path / method}")
    link = (f"?data=digits:test&n=200&k=10&image_size=32&finetuned={specs[0]}&compare={specs[1]}")
    with app_server() as url, chromium_page(height=1700) as page:
        page.goto(f"{url}/{link}")
        page.get_by_role("tab", name="Three-way").click(timeout=600_000)
        page.wait_for_function(f"{CHARTS_DRAWN} >= 5", timeout=900_000, polling=500)  # 2 maps + 3 maps
        page.get_by_text("Kept by both", exact=False).first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SCREENSHOTS / "drift_three_way.png"), full_page=True)
