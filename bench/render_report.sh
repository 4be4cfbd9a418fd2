#!/bin/sh
# Check script (not CI): write a run's report.html with `metakd report`, render it in headless Chromium
# (Debian's `chromium` package: apt-get install -y chromium; optipng, when present, shrinks the PNG) with every
# network name unresolvable, so a page that needed a fetch would show it, and save a screenshot to look at.
#   bench/render_report.sh RUN_DIR [OUT.png] [WIDTH,HEIGHT]
#   bench/render_report.sh /tmp/quickstart docs/report.png 1200,2000
set -eu
run=${1:?usage: bench/render_report.sh RUN_DIR [OUT.png] [WIDTH,HEIGHT]}
out=${2:-docs/report.png}
size=${3:-1200,2000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "error: needs Chromium: apt-get install -y chromium" >&2
    exit 2
fi
metakd --run-dir "$run" report
page="$(cd "$run" && pwd)/report.html"
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --host-resolver-rules="MAP * ~NOTFOUND" \
    --screenshot="$out" --window-size="$size" "file://$page" 2>/dev/null
if command -v optipng >/dev/null; then
    optipng -quiet -o2 "$out"
fi
echo "$out: $(wc -c < "$out") bytes; look at it before calling the page done"
