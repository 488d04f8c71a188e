"""The study in optuna-dashboard, seen through headless Chromium: a tiny search, its report, then
``python -m search.dashboard`` on a free port of 127.0.0.1, driven by Playwright.

Needs Debian's /usr/bin/chromium (never a downloaded browser); skipped without it, and failed
instead where NAS_REQUIRE names "browser" (CI).
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from search.report import GRAPH_OBJECT_ID
from search.report import main as report_main
from search.run import main as run_main
from tests.search.searchkit import search_args

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (root in a container), no GPU, and nothing that calls out: this machine refuses
# outside connections, and Chromium would otherwise keep trying.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 90_000  # two busy cores: the dashboard's first page takes a while

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(cwd: Path, port: int, log: Path) -> Iterator[str]:
    """Run ``python -m search.dashboard`` until the block ends; yields what it printed once the
    server answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search.dashboard", "--port", str(port)],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"search.dashboard exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"search.dashboard did not answer in 120 s:\n{log.read_text()}")
                time.sleep(0.5)
        yield log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dashboard_shows_trials_pareto_figure_and_artifacts(tmp_path: Path, monkeypatch) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(search_args(tmp_path, trials=4)) == 0
        assert report_main(["--storage", "sqlite:///results/tiny.db"]) == 0

    with (
        dashboard(tmp_path, free_port(), tmp_path / "dashboard.log") as printed,
        sync_playwright() as p,
    ):
        study_url = re.search(r"study +tiny: (http://\S+)", printed)
        assert study_url, printed
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)

            # The study page: the dashboard's own plots of the trials and the project's figure.
            page.goto(study_url.group(1))
            figure = page.locator(f'[id="user-defined-plot:{GRAPH_OBJECT_ID}"]')
            expect(figure.locator(".main-svg").first).to_be_attached()
            expect(figure).to_contain_text("validation accuracy vs parameters")
            expect(figure).to_contain_text("budget 20k")
            expect(figure).to_contain_text("Pareto front")
            expect(page.locator("#graph-timeline .main-svg").first).to_be_attached()
            figure.scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "study.png", full_page=True)

            # The trial list: every trial, and the best one's artifacts (the curve as an image).
            page.goto(study_url.group(1) + "/trials")
            expect(page.get_by_text("4 Trials")).to_be_visible()
            for number in range(4):
                expect(page.get_by_text(f"Trial {number}", exact=True).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"trial-\d+-curve\.png")).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"trial-\d+-summary\.txt")).first).to_be_visible()
            curve = page.locator("img[src*='/artifacts/']").first
            expect(curve).to_be_visible()
            loaded = curve.evaluate("img => img.complete && img.naturalWidth")
            assert loaded and loaded > 100, "the artifact image did not load"
            page.screenshot(path=tmp_path / "trials.png")

            # The note the report wrote.
            page.goto(study_url.group(1) + "/note")
            expect(page.get_by_text(re.compile(r"Pareto front: \d+ trials"))).to_be_visible()

            # The report's own HTML opens offline: plotly.js is inside the file.
            page.goto((tmp_path / "results/tiny/report/pareto.html").as_uri())
            expect(page.locator(".main-svg").first).to_be_attached()
        finally:
            browser.close()
    assert (tmp_path / "study.png").stat().st_size > 10_000
    assert (tmp_path / "trials.png").stat().st_size > 10_000
