"""Drive the real app in a real browser: a test helper, used by the end-to-end test and the app benchmark.

Starts ``streamlit run app/main.py`` on a free loopback port and Debian's Chromium through
Playwright (never a browser that Playwright downloads: this machine cannot fetch one).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from proxyfda.cli import streamlit_command

ROOT = Path(__file__).resolve().parent.parent
#: where the browser tests save what each page looked like
SCREENSHOTS = Path(os.environ.get("PROXYFDA_SCREENSHOTS", ROOT / "screenshots"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: true once both drift maps have drawn their points
MAPS_DRAWN = ("(() => { const g = document.querySelectorAll('.stPlotlyChart .js-plotly-plot');"
              " return g.length >= 2 && g[0]._fullData && g[1]._fullData"
              " && g[0]._fullData[0]._length > 0 && g[1]._fullData[0]._length > 0; })()")


#: url -> process id of each running app server (for tests that watch its memory)
SERVER_PIDS: dict[str, int] = {}


def resident_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_server(env: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run the app in a subprocess; yield its URL once the port answers; stop it afterwards."""
    port = free_port()
    server = subprocess.Popen(
        streamlit_command(port, headless=True, address="127.0.0.1"),
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start on port {port} (exit code {server.poll()})")
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        SERVER_PIDS[url] = server.pid
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@contextlib.contextmanager
def chromium_page(width: int = 1500, height: int = 1800):
    """A Playwright page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if not CHROMIUM.exists():
        raise RuntimeError("Debian's chromium is needed: apt-get install -y chromium (`make test` installs it)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def seconds_to_maps(page, url: str, timeout_ms: float = 600_000) -> float:
    """Open ``url`` and return the seconds until both drift maps are drawn."""
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(MAPS_DRAWN, timeout=timeout_ms, polling=100)
    return time.perf_counter() - started
