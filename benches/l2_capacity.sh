#!/usr/bin/env bash
# Does L2 need Redis Cluster? What one Redis instance serves, against what
# the gateways can ask of it, in the same run:
#   1. redis-benchmark: GETs/s of one private redis-server (single-threaded,
#      as deployed) with values the size of results: 100 KB (hit.sh's
#      1200×900 JPEG) and 300 KB (a 1440×1080 JPEG at q85);
#   2. one release gateway with L1 off (NWS_CACHE_MEMORY=0), so every hit
#      is an L2 hit from that Redis: requests/s at saturation (oha, 64
#      connections), i.e. the most L2 GETs one gateway replica sends.
# Both share the machine's two cores with their load generator.
#   bash benches/l2_capacity.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
# shellcheck source=benches/oha.sh
source benches/oha.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
cargo build --release --locked -p nws-mesh >&2

WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
REDIS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxmemory 1gb --maxmemory-policy allkeys-lru --daemonize no > "$WORK/redis.log" 2>&1 &
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "== 1. one Redis instance, GET of a result-sized value (redis-benchmark, 16 clients)"
with_load_average true >/dev/null
for size in 100000 300000; do
  redis-benchmark -p "$REDIS_PORT" -t set,get -d "$size" -c 16 -n 40000 -q 2>/dev/null \
    | tr '\r' '\n' | grep -E '^(SET|GET):' | sed "s/^/$size B  /"
done

echo "== 2. one gateway, L1 off: every hit comes from that Redis (oha, 64 connections, ${DURATION}s)"
start_mesh "$WORK/data" RUST_LOG=warn,nws_runtime::http=info,gateway=info \
  NWS_CACHE_MEMORY=0 NWS_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
PHOTO="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
LOCATION="$(curl -sS -o "$WORK/result.jpg" -D - --data-binary "@$PHOTO" \
  "$GATEWAY/v1/watermark?format=jpeg&max_width=1200&max_height=900&quality=80" \
  | tr -d '\r' | sed -n 's/^content-location: //Ip')"
echo "result: $(stat -c %s "$WORK/result.jpg") bytes"
for _ in $(seq 50); do
  curl -sS -o /dev/null -D - "$GATEWAY$LOCATION" | tr -d '\r' | grep -qi '^x-cache: HIT-L2' && break
  sleep 0.1
done
curl -sS -o /dev/null -D - "$GATEWAY$LOCATION" | tr -d '\r' | grep -qi '^x-cache: HIT-L2' \
  || { echo "the result is not served from L2" >&2; exit 1; }
commands() { redis-cli -p "$REDIS_PORT" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p'; }
before="$(commands)"
with_load_average "$OHA" --no-tui -z "${DURATION}s" -c 64 "$GATEWAY$LOCATION" \
  | grep -E 'Requests/sec|Slowest|Fastest|Average|50.00%|99.00%|\[200\]|load average'
# Identical lookups in flight share one Redis GET: what reached Redis.
echo "redis commands during the run: $(( $(commands) - before )) in ${DURATION}s"
