#!/usr/bin/env bash
# Draws a report with headless Chromium into a PNG beside it:
#
#   scripts/report-screenshot.sh out/demo/report.html [OUT.png] [WIDTHxHEIGHT]
#
# The report is self-contained (charts and thumbnails inline), so the page
# needs no network. Needs `chromium` (Debian: apt-get install chromium).
set -euo pipefail

report="${1:?usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]}"
out="${2:-${report%.html}.png}"
size="${3:-1400x4200}"
[[ -f "$report" ]] || { echo "no such report: $report (run make demo first)" >&2; exit 1; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "needs chromium (Debian: apt-get install chromium)" >&2; exit 1; }

abs="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: CI containers run as root, where Chromium's sandbox refuses
# to start; the page is our own file.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="${size/x/,}" --screenshot="$out" "file://$abs" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $out" >&2
