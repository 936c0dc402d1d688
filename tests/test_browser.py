"""The browser check (fast tier): a committed run's report.html opened in headless
Chromium (:mod:`robustpath.report.pagecheck`) has its tables and embedded figures and makes
no request; a page broken in those ways is caught.

``make test`` installs Debian's chromium first (scripts/ensure-chromium.sh); the test
skips, saying why, only where the browser could not be installed. About 4 s a page.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from robustpath.report.pagecheck import check_page, find_browser

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "results" / "fashion-mnist-cnn-small-quick" / "report.html"

pytestmark = pytest.mark.skipif(
    find_browser() is None,
    reason="chromium not installed and scripts/ensure-chromium.sh could not install it "
    "(no apt or not root): the browser check of report.html did not run")


def test_committed_report_renders_in_headless_chromium():
    assert check_page(REPORT, min_tables=3, min_images=2) == []


def test_broken_page_is_caught(tmp_path):
    page = tmp_path / "report.html"
    text = REPORT.read_text()
    # a truncated figure, a figure fetched from the network, a table row with a stray cell
    text = re.sub(r'(data:image/png;base64,)([A-Za-z0-9+/]{40})[A-Za-z0-9+/=]+',
                  r"\1\2", text, count=1)
    text = text.replace("</body>", '<img src="https://example.org/x.png"></body>', 1)
    text = re.sub(r"<tbody>(\s*)<tr>", r"<tbody>\1<tr><td>stray</td>", text, count=1)
    page.write_text(text)
    problems = "\n".join(check_page(page, min_tables=3, min_images=2))
    assert "does not decode" in problems
    # the page's Content-Security-Policy blocks the fetch (a console violation is
    # reported); a page without the policy would make the request, which is reported too
    assert ("requested https://example.org/x.png" in problems
            or ("Content Security Policy" in problems and "img-src" in problems))
    assert re.search(r"table 1: body rows of \[\d+(, \d+)?\] cells", problems)


def test_missing_browser_is_said(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="ensure-chromium"):
        check_page(REPORT)
