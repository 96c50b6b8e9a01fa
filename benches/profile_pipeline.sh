#!/usr/bin/env bash
# Where one photo's upload spends its CPU: a release mesh with one optimizer
# worker, `perf record` on it while the photo is uploaded RUNS times (a
# text of its own each time, so every upload is rendered), then the hottest
# functions, and each stage's share of them by call chain.
#   bash benches/profile_pipeline.sh photo.jpg [runs] [query]
# e.g. bash benches/profile_pipeline.sh ../shared/testdata/images/dragonfly_4224x3168_progressive.jpg 30
# Needs `perf` (linux-perf) and perf_event_paranoid ≤ 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTO="$1"
RUNS="${2:-30}"
QUERY="${3:-format=auto}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
cargo build --release --locked -p nws-mesh >&2

WORK="$(mktemp -d)"
# shellcheck source=benches/mesh.sh
. benches/mesh.sh
trap 'stop_meshes; rm -rf "$WORK"' EXIT
URL="$(start_mesh profile NWS_OPTIMIZER_WORKERS=1)"
MESH="$(cat "$WORK/profile.pid")"

upload() {
  curl -sS -o /dev/null --data-binary "@$PHOTO" -H "Content-Type: application/octet-stream" \
    "$URL/v1/watermark?$QUERY&wm_text=profile%20$1"
}
upload warm-up
perf record -F 1999 -g -p "$MESH" -o "$WORK/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
for i in $(seq "$RUNS"); do upload "$i"; done
kill -INT "$PERF"
wait "$PERF" || true

echo "## Hottest functions (self time), $RUNS uploads of $(basename "$PHOTO") ($QUERY)"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
  grep -E '^ +[0-9.]+%' | head -25
echo
echo "## By stage (time under each pipeline function, call chains included)"
perf report -i "$WORK/perf.data" --children --sort symbol --stdio 2>/dev/null |
  grep -E '^ +[0-9.]+% +[0-9.]+%.*(pipeline::(decode|resize|watermark|encode)::[a-z_]+|pipeline::run)' | head -20
