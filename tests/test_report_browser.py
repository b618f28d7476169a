"""The HTML report in a real browser: Debian's headless Chromium renders it, the rendered DOM has
the findings and the feature cards, the page logs nothing to the console, and a screenshot is
taken (kept under the test's tmp folder, or in $FEATUREDRIFT_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from feature_reports import EMERGING, MOST_DRIFTED, record_story_run

from featuredrift.reports.html import write_run_report
from featuredrift.store import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? (.*)")
# Measures the laid-out page into the DOM, so --dump-dom reports what Chromium rendered.
PROBE = ("<script>window.addEventListener('load', () => {document.body.dataset.renderedHeight = "
         "document.documentElement.scrollHeight; document.body.dataset.renderedWidth = "
         "document.documentElement.scrollWidth;});</script>")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium not installed (scripts/setup.sh --services installs Debian's chromium)")


def run_chromium(url: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", "--window-size=1400,1000", *flags, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "HOME": str(cwd)})


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


class RenderedPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.cards: list[tuple[str, int]] = []
        self.findings = 0
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if "feature-card" in (attrs.get("class") or "").split():
            self.cards.append((attrs["data-layer"], int(attrs["data-feature"])))
        if tag == "li" and self.ids and self.ids[-1] == "findings":
            self.findings += 1
        if tag == "body":
            self.body = attrs


def test_console_check_catches_page_errors(tmp_path):
    """The console check has teeth: a page that logs an error and throws is caught."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><body><script>console.error('boom'); notAFunction();</script></body>")
    result = run_chromium(broken.as_uri(), "--dump-dom", cwd=tmp_path)
    messages = console_messages(result.stderr)
    assert any("boom" in m for m in messages) and any("notAFunction" in m for m in messages), result.stderr[-2000:]


@pytest.mark.slow
def test_report_renders_in_chromium_with_findings_cards_and_no_console_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'story.db'}"
    record_story_run(url)
    with RunStore(url) as store:
        files = write_run_report(store, "story", tmp_path / "report")
    probed = files.html.with_name("probed.html")
    probed.write_text(files.html.read_text().replace("</body>", PROBE + "</body>"))

    dom = run_chromium(probed.as_uri(), "--dump-dom", cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    page = RenderedPage()
    page.feed(dom.stdout)
    assert page.ids[:3] == ["goal", "findings", "layer-layers.1"] and "feature-cards" in page.ids
    assert page.findings >= 5
    assert {("layers.3", MOST_DRIFTED), ("layers.3", EMERGING)} <= set(page.cards)
    height, width = int(page.body["data-rendered-height"]), int(page.body["data-rendered-width"])
    assert width <= 1400, "the report scrolls sideways at 1400 px"
    assert height < 9000, f"the report is {height} px tall"

    shots = Path(os.environ.get("FEATUREDRIFT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "report.png"
    shot = run_chromium(files.html.as_uri(), f"--screenshot={screenshot}", "--window-size=1400,3000", cwd=tmp_path)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert console_messages(shot.stderr) == []
    assert screenshot.read_bytes().startswith(PNG_MAGIC) and screenshot.stat().st_size > 50_000
