#!/usr/bin/env bash
# Whether a Bloom filter in front of Redis would pay: the time an L2 miss
# costs inside requests that miss everywhere, from the gateway's own
# Server-Timing, with the machine's Redis (or NWS_REDIS_URL).
#   bash benches/l2_miss.sh [uploads per image]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
REDIS="${NWS_REDIS_URL:-redis://127.0.0.1:6379}"
IMAGES="${NWS_TEST_IMAGES:-../shared/testdata/images}"
cargo build --release --locked -p nws-mesh >&2
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
NWS_DATA_DIR="$WORK" NWS_LOG_FORMAT=json RUST_LOG=warn,gateway=info \
NWS_REDIS_URL="$REDIS" NWS_REDIS_PREFIX="nws-bench:$$:$(date +%s%N):" \
  "$CARGO_TARGET_DIR/release/nws-mesh" > "$WORK/mesh.log" 2>&1 &
for _ in $(seq 100); do grep -q '"service":"gateway"' "$WORK/mesh.log" 2>/dev/null && break; sleep 0.1; done
GATEWAY="http://$(grep -o '"service":"gateway","addr":"[^"]*"' "$WORK/mesh.log" | sed 's/.*"addr":"//; s/"$//')"
echo "| image | L2 miss (ms) | L3 miss (ms) | whole request (ms) | L2 miss / request |"
echo "|---|---:|---:|---:|---:|"
for IMAGE in tiny_16x16.jpg kleiber_4000x3000.jpg; do
  python3 benches/l2_miss.py --gateway "$GATEWAY" --image "$IMAGES/$IMAGE" --count "$COUNT"
done
