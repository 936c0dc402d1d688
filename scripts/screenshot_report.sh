#!/usr/bin/env bash
# Render a run's (or sweep's, or comparison's) HTML report in headless Chromium and
# save a PNG screenshot, to check what a reader sees.
#
#   scripts/screenshot_report.sh RUN_DIR|REPORT.html [OUT.png] [WIDTH,HEIGHT]
#
# RUN_DIR: a run folder (its report.html), a sweep folder (aggregate/report.html) or
# a --compare-out folder (comparison.html). OUT defaults to <report>.png beside it
# (or $SCREENSHOT_DIR/<name>.png); the window defaults to 1200,4000 (a full report).
# Every host name resolves to nothing (--host-resolver-rules), so the screenshot also
# shows that the report is self-contained. Needs Debian's chromium
# (apt-get install -y chromium).
set -euo pipefail
src=${1:?usage: $0 RUN_DIR|REPORT.html [OUT.png] [WIDTH,HEIGHT]}
if [[ -d $src ]]; then
  for cand in report.html aggregate/report.html comparison.html; do
    if [[ -f $src/$cand ]]; then html=$src/$cand; break; fi
  done
  : "${html:?no report.html, aggregate/report.html or comparison.html in $src}"
else
  html=$src
fi
html=$(realpath "$html")
out=${2:-${SCREENSHOT_DIR:+$SCREENSHOT_DIR/$(basename "$(dirname "$html")")-$(basename "${html%.html}").png}}
out=${out:-${html%.html}.png}
size=${3:-1200,4000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "error: chromium not found (apt-get install -y chromium)" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --host-resolver-rules="MAP * ~NOTFOUND" --hide-scrollbars --window-size="$size" \
  --screenshot="$(realpath -m "$out")" "file://$html" >/dev/null 2>&1
test -s "$out"
echo "$out"
