"""``python -m robustpath.report.pagecheck REPORT.html``: open a report page in headless
Chromium and say what is broken (exit 1), as a reader's browser would see it.

Checks, on the DOM Chromium builds (``--dump-dom``) and its network log:

* the page parsed into a title and headings, and into as many tables as the file
  holds, each with a header and body rows of one width (a stray ``|`` in a cell
  shifts a row);
* every ``<img>`` is an embedded PNG (``data:image/png;base64``) that decodes, and the
  page holds at least ``min_images`` of them;
* the page made no request beyond its own file: every request the page initiated
  (network log, ``initiator`` of the request) is ``file:`` or ``data:``; requests
  of the browser itself (initiator "not an origin") are not the page's;
* the page wrote nothing to the browser console (a Content-Security-Policy violation,
  a script error).

The browser runs with a fresh profile, without GPU, sandbox, sync, component updates
or background networking, and every host name resolves to nothing. Debian's
``chromium`` (``scripts/ensure-chromium.sh``, run by ``make test``).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0")


def find_browser() -> str | None:
    """Path of ``chromium`` (or ``chromium-browser``), None when neither is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Dom(HTMLParser):
    """Tables (rows of cell counts, header flag), images, headings, title of a DOM."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[tuple[bool, int]]] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self.title = ""
        self._stack: list[str] = []
        self._row: list[str] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(tag)
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag in ("title", "h1", "h2"):
            self._text = []
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None and self.tables:
            self.tables[-1].append((all(c == "th" for c in self._row), len(self._row)))
            self._row = None
        elif tag in ("title", "h1", "h2") and self._text is not None:
            text = "".join(self._text).strip()
            if tag == "title":
                self.title = text
            else:
                self.headings.append(text)
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def _png_ok(src: str) -> str | None:
    """None for a decodable embedded PNG, else what is wrong with ``src``."""
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return f"image not embedded as PNG: {src[:60]!r}"
    try:
        data = base64.b64decode(src[len(prefix):], validate=True)
    except ValueError:
        return "image with broken base64 data"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a broken image
        return f"image that does not decode ({type(e).__name__})"
    return None


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page itself requested (network log events with a page initiator)."""
    try:
        d = json.loads(net_log.read_text())
    except (OSError, ValueError):  # the log is closed on exit; a killed browser leaves it open
        text = net_log.read_text() if net_log.is_file() else ""
        return sorted(set(re.findall(r'"url":"((?:https?|wss?|ftp)://[^"]+)"', text)))
    types = {v: k for k, v in d.get("constants", {}).get("logEventTypes", {}).items()}
    out = []
    for e in d.get("events", []):
        p = e.get("params") or {}
        if types.get(e.get("type")) != "URL_REQUEST_START_JOB" or "url" not in p:
            continue
        if p.get("initiator") == "not an origin":  # the browser's own traffic
            continue
        if not str(p["url"]).startswith(("file:", "data:")):
            out.append(str(p["url"]))
    return out


def check_page(html: str | Path, *, min_tables: int = 1, min_images: int = 1,
               browser: str | None = None, timeout: float = 90) -> list[str]:
    """Problems of the page ``html`` as Chromium renders it (module docstring); an
    empty list for a sound page. Raises FileNotFoundError without a browser."""
    html = Path(html).resolve()
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("chromium not installed (scripts/ensure-chromium.sh)")
    source = html.read_text(errors="replace")
    with tempfile.TemporaryDirectory(prefix="rp-pagecheck-") as tmp:
        net = Path(tmp) / "net.json"
        proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp}/profile",
                               f"--log-net-log={net}", "--dump-dom", html.as_uri()],
                              capture_output=True, text=True, timeout=timeout)
        requests = _page_requests(net)
    problems = []
    if proc.returncode != 0 or not proc.stdout.strip():
        return [f"chromium exited {proc.returncode} without a DOM: {proc.stderr[-300:]}"]
    dom = _Dom()
    dom.feed(proc.stdout)
    if not dom.title:
        problems.append("no <title>")
    if not dom.headings:
        problems.append("no <h1>/<h2> heading")
    expected = len(re.findall(r"<table[\s>]", source))
    if len(dom.tables) != expected:
        problems.append(f"the browser built {len(dom.tables)} tables from {expected} in the file")
    if len(dom.tables) < min_tables:
        problems.append(f"{len(dom.tables)} tables, expected at least {min_tables}")
    for i, rows in enumerate(dom.tables):
        head = [n for is_head, n in rows if is_head]
        body = [n for is_head, n in rows if not is_head]
        if not head or not body:
            problems.append(f"table {i + 1} lacks a header or body rows")
        elif any(n != head[0] for n in body):
            problems.append(f"table {i + 1}: body rows of {sorted(set(body))} cells under a "
                            f"header of {head[0]}")
    if len(dom.images) < min_images:
        problems.append(f"{len(dom.images)} images, expected at least {min_images}")
    problems += [p for p in map(_png_ok, dom.images) if p]
    problems += [f"the page requested {u}" for u in requests]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    problems += [f"console: {line.split(']', 1)[-1].strip()[:200]}" for line in console]
    return problems


def main(argv: list[str] | None = None) -> int:
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m robustpath.report.pagecheck",
                       description="Open report pages in headless Chromium; exit 1 when one "
                       "is broken.")
    p.add_argument("pages", nargs="+", help="report.html files")
    p.add_argument("--min-tables", type=int, default=1)
    p.add_argument("--min-images", type=int, default=1)
    args = p.parse_args(argv)
    if find_browser() is None:
        print("error: chromium not found (bash scripts/ensure-chromium.sh, or "
              "apt-get install -y chromium)", file=sys.stderr)
        return 2
    bad = 0
    for page in args.pages:
        if not Path(page).is_file():
            print(f"error: {page} not found", file=sys.stderr)
            return 2
        problems = check_page(page, min_tables=args.min_tables, min_images=args.min_images)
        print(f"{page}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        for q in problems:
            print(f"  - {q}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
