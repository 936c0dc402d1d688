#!/usr/bin/env bash
# Make sure a headless browser is present for the fast tier's page check
# (tests/test_browser.py opens report.html in headless Chromium).
# Debian's chromium package puts the browser at /usr/bin/chromium. Without apt or root
# the browser test skips and says why; nothing else needs the browser.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian package chromium (for the browser check of report.html) ..."
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 \
        && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1)) \
    && exit 0
  echo "warning: could not install chromium; the browser check of report.html will skip" >&2
else
  echo "note: chromium missing and apt/root unavailable; the browser check of report.html" \
       "will skip (install it with: apt-get install -y chromium)" >&2
fi
exit 0
