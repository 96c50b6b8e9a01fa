#!/usr/bin/env bash
# Misses through the gateway deployed apart from Optimizer and Storage (three
# processes, as in Kubernetes): per-miss wall time, CPU ms per miss of each
# process, and the gateway's peak RSS, for the 12 MP photo.
#   bash benches/miss_path.sh [uploads] [label]
# BIN_DIR picks the binaries (default: this checkout's release build).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-40}"
LABEL="${2:-this build}"
IMAGE="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p gateway -p optimizer-svc -p storage-svc >&2
  BIN_DIR="$CARGO_TARGET_DIR/release"
fi
WORK="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Starts a binary with JSON logs and prints the address its `service` reported.
start() {
  local name="$1" service="$2"; shift 2
  env NWS_LOG_FORMAT=json "$@" "$BIN_DIR/$name" > "$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! > "$WORK/$name.pid"
  for _ in $(seq 200); do
    grep -q "\"service\":\"$service\",\"addr\"" "$WORK/$name.log" 2>/dev/null && break
    sleep 0.05
  done
  grep -o "\"service\":\"$service\",\"addr\":\"[^\"]*\"" "$WORK/$name.log" | head -1 | sed 's/.*"addr":"//; s/"$//'
}

STORAGE="$(start storage-svc storage NWS_STORAGE_ADDR=127.0.0.1:0 NWS_DATA_DIR="$WORK/data")"
OPTIMIZER="$(start optimizer-svc optimizer NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_URL="http://$STORAGE")"
GATEWAY="$(start gateway gateway NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_CACHE_MEMORY=0 \
  NWS_OPTIMIZER_URL="http://$OPTIMIZER" NWS_STORAGE_URL="http://$STORAGE")"
for _ in $(seq 100); do
  curl -sf "http://$GATEWAY/readyz" >/dev/null && break
  sleep 0.1
done
python3 benches/miss_path.py --gateway "http://$GATEWAY" --image "$IMAGE" --count "$COUNT" \
  --label "$LABEL" --pids "$(cat "$WORK/gateway.pid"),$(cat "$WORK/optimizer-svc.pid"),$(cat "$WORK/storage-svc.pid")"
