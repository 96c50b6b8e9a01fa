#!/usr/bin/env bash
# Per-image pipeline timings through the real mesh (release build, one
# optimizer worker), next to libvips doing the same resize + encode in the
# same run, then whole uploads of the 12 MP photo as JPEG, WebP and AVIF
# with their SSIM. Prints Markdown tables for BENCHMARKS.md, and the load
# average before and after (other work on the machine skews every figure).
#   bash benches/pipeline.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-15}"
IMAGES="${NWS_TEST_IMAGES:-../shared/testdata/images}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
# libvips itself and libjpeg-turbo's djpeg/cjpeg from Debian, the Python
# binding from PyPI.
dpkg -s libvips42 libjpeg-turbo-progs >/dev/null 2>&1 || apt-get install -y -qq libvips42 libjpeg-turbo-progs >&2
VENV="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyvips==3.0.0

cargo build --release --locked -p nws-mesh >&2
DATA="$(mktemp -d)"
LOG="$DATA/mesh.log"
NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
NWS_DATA_DIR="$DATA" NWS_OPTIMIZER_WORKERS=1 NWS_LOG_FORMAT=json \
  "$CARGO_TARGET_DIR/release/nws-mesh" > "$LOG" 2>&1 &
MESH=$!
trap 'kill $MESH 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q '"service":"gateway"' "$LOG" 2>/dev/null && break; sleep 0.1; done
ADDR="$(grep -o '"service":"gateway","addr":"[^"]*"' "$LOG" | sed 's/.*"addr":"//; s/"$//')"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$VENV/bin/python" benches/pipeline_report.py --gateway "http://$ADDR" --images "$IMAGES" --runs "$RUNS"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
