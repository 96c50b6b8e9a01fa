#!/usr/bin/env bash
# Overload: the 12 MP photo uploaded through the real mesh (release build,
# no rate limits, one optimizer worker per core) by 2, 8, 24 and 64
# clients at once, each upload with a wm_text of its own so every one
# computes. Refused uploads (429/503) are retried after their Retry-After
# (else after 1 s). One table row per concurrency, from a fresh mesh:
# served images/s, refusals, latencies, and the optimizer's own refusal
# counts by reason (nws_optimizer_refused_calls_total).
#   bash benches/overload.sh [uploads per level] [seconds per level] [levels...]
# Settings of the mesh pass through, e.g. NWS_QUEUE_WAIT=5s bash benches/overload.sh
# MESH_BIN picks another build of nws-mesh (default: this checkout's release
# build), e.g. one of an earlier commit to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-120}"
SECONDS_PER_LEVEL="${2:-60}"
LEVELS=("${@:3}")
[ "${#LEVELS[@]}" -gt 0 ] || LEVELS=(2 8 24 64)
IMAGE="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
if [ -z "${MESH_BIN:-}" ]; then
  cargo build --release --locked -p nws-mesh >&2
  MESH_BIN="$CARGO_TARGET_DIR/release/nws-mesh"
fi

echo "$MESH_BIN on $(nproc) cores; NWS_OPTIMIZER_WORKERS=${NWS_OPTIMIZER_WORKERS:-one per core}, NWS_QUEUE_WAIT=${NWS_QUEUE_WAIT:-2s (default)}, NWS_OPTIMIZER_QUEUE=${NWS_OPTIMIZER_QUEUE:-default}; $COUNT uploads per level, none started or retried after ${SECONDS_PER_LEVEL} s"
echo
echo "| clients | served | served images/s | 503 with / without Retry-After | 429 with / without Retry-After | median Retry-After | abandoned | errors | p50 served (s) | p95 served (s) | p95 with retries (s) | optimizer refusals |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for CONCURRENCY in "${LEVELS[@]}"; do
  DATA="$(mktemp -d)"
  LOG="$DATA/mesh.log"
  NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 \
  NWS_STORAGE_ADDR=127.0.0.1:0 NWS_ADMIN_ADDR=127.0.0.1:0 NWS_DATA_DIR="$DATA" NWS_LOG_FORMAT=json \
    "$MESH_BIN" > "$LOG" 2>&1 &
  MESH=$!
  for _ in $(seq 100); do grep -q '"service":"gateway","addr"' "$LOG" 2>/dev/null && break; sleep 0.1; done
  GATEWAY="$(grep -o '"service":"gateway","addr":"[^"]*"' "$LOG" | head -1 | sed 's/.*"addr":"//; s/"$//')"
  ADMIN="$(grep -o '"service":"admin","addr":"[^"]*"' "$LOG" | head -1 | sed 's/.*"addr":"//; s/"$//')"
  for _ in $(seq 100); do curl -sf "http://$GATEWAY/readyz" >/dev/null && break; sleep 0.1; done
  python3 benches/overload.py --gateway "http://$GATEWAY" ${ADMIN:+--admin "http://$ADMIN"} --image "$IMAGE" \
    --concurrency "$CONCURRENCY" --count "$COUNT" --seconds "$SECONDS_PER_LEVEL" || true
  kill "$MESH"; wait "$MESH" 2>/dev/null || true
  rm -rf "$DATA"
done
