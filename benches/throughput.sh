#!/usr/bin/env bash
# Images per second and peak memory for the 12 MP photo, through the real
# mesh (release build) with 1 and then 2 optimizer workers, next to libvips
# (pyvips, one thread per image) run 1 and 2 at a time in the same run.
#   bash benches/throughput.sh [images]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-40}"
IMAGE="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
dpkg -s libvips42 >/dev/null 2>&1 || apt-get install -y -qq libvips42 >&2
VENV="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyvips==3.0.0
cargo build --release --locked -p nws-mesh >&2

echo "| run | parallel | images/s | peak RSS (MiB) |"
echo "|---|---:|---:|---:|"
for WORKERS in 1 2; do
  DATA="$(mktemp -d)"
  LOG="$DATA/mesh.log"
  NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
  NWS_DATA_DIR="$DATA" NWS_OPTIMIZER_WORKERS="$WORKERS" NWS_LOG_FORMAT=json \
    "$CARGO_TARGET_DIR/release/nws-mesh" > "$LOG" 2>&1 &
  MESH=$!
  for _ in $(seq 100); do grep -q '"service":"gateway"' "$LOG" 2>/dev/null && break; sleep 0.1; done
  ADDR="$(grep -o '"service":"gateway","addr":"[^"]*"' "$LOG" | sed 's/.*"addr":"//; s/"$//')"
  "$VENV/bin/python" benches/throughput.py mesh --gateway "http://$ADDR" --image "$IMAGE" \
    --count "$COUNT" --parallel "$WORKERS" --pid "$MESH"
  kill "$MESH"; wait "$MESH" 2>/dev/null || true
  rm -rf "$DATA"
done
for PARALLEL in 1 2; do
  "$VENV/bin/python" benches/throughput.py vips --image "$IMAGE" --count "$COUNT" --parallel "$PARALLEL"
done
