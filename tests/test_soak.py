"""A soak test: a few browser sessions use one app server at the same time, switching pages, data sets and k.

Bounded in count (3 sessions, 2 rounds) and time, on loopback only. Each session must only ever see its
own settings and results, and the server's memory must stop growing once its caches are warm.
"""

from __future__ import annotations

import pytest

from browser import CHROMIUM, CHROMIUM_FLAGS, SCREENSHOTS, SERVER_PIDS, app_server, resident_mb

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N = 150  # images per request: N − 1 = 149 in the random baseline k/(N−1)
SESSIONS = (3, 5, 7)  # each session's k at the start
ROUNDS = 2  # the second round finds every cache warm: memory must not grow past it (3 rounds took 3-4 minutes)
#: memory a warm server may still gain over two further rounds of the same work
GROWTH_MB = 250


def _wait_for_k(page, k: int, where: str) -> None:
    """Wait until the page shows the report for k (its random baseline k/(N−1)); on a timeout, keep a
    screenshot of what the page showed instead."""
    try:
        page.get_by_text(f"random baseline k/(N−1) = {k / (N - 1):.4f}").first.wait_for(timeout=300_000)
    except Exception as exc:
        page.screenshot(path=str(SCREENSHOTS / "soak_failure.png"), full_page=True)
        raise AssertionError(f"{where}: no report for k={k} at {page.url}") from exc


def _k_slider(page):
    return page.get_by_role("slider", name="k (neighbours)")


def test_concurrent_sessions_keep_their_own_state_and_memory_stays_bounded(tiny_run):
    from playwright.sync_api import sync_playwright

    link = f"?data=digits:test&n={N}&image_size=32&finetuned=run:{tiny_run}"
    datasets = ("digits:test", "digits:train")
    with app_server() as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        pages = [browser.new_context(viewport={"width": 1300, "height": 1100}).new_page() for _ in SESSIONS]
        expected = {i: (k, datasets[0]) for i, k in enumerate(SESSIONS)}
        for i, page in enumerate(pages):  # all sessions start before any is waited for
            page.goto(f"{url}/{link}&k={SESSIONS[i]}")
        memory = []
        for round_ in range(ROUNDS):
            for i, page in enumerate(pages):  # each asks for new work; the others' runs are still going
                _wait_for_k(page, expected[i][0], f"session {i}, round {round_}")
                k, data = expected[i][0] + 1, datasets[(round_ + i) % 2]
                _k_slider(page).focus()
                _k_slider(page).press("ArrowRight")
                page.get_by_label("Data", exact=True).fill(data)
                page.get_by_role("button", name="Compute").click()
                expected[i] = (k, data)
            for i, page in enumerate(pages):  # a visit to another page, then back: nothing of another session
                _wait_for_k(page, expected[i][0], f"session {i}, round {round_}")
                page.get_by_role("link", name="Teaching").click()
                page.get_by_role("button", name="Step ×10", exact=True).wait_for(timeout=120_000)
                # each session steps its own toy once a round: a toy shared by the sessions would be further on
                page.get_by_role("button", name="Step ×10", exact=True).click()
                page.get_by_text(f"step {10 * (round_ + 1)}", exact=False).first.wait_for(timeout=120_000)
                page.get_by_role("link", name="Drift Explorer").click()
                _wait_for_k(page, expected[i][0], f"session {i}, round {round_}")
                assert int(_k_slider(page).input_value()) == expected[i][0]
                assert page.get_by_label("Data", exact=True).input_value() == expected[i][1]
            memory.append(resident_mb(SERVER_PIDS[url]))
        pages[0].screenshot(path=str(SCREENSHOTS / "soak_session_0.png"), full_page=True)
        browser.close()
    print(f"server memory after each round (MB): {[round(m) for m in memory]}")
    assert memory[-1] - memory[0] < GROWTH_MB, memory
