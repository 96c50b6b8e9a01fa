#!/usr/bin/env bash
# The cache-hit path against a static file server, in the same run: the
# gateway's GET /v1/images/{key} (a ~100 KB JPEG result, served from L1)
# and nginx (Debian) serving the same bytes as a file, both over keep-alive
# on loopback, loaded by oha (crates.io).
#   1. closed loop, 64 connections: requests/s, alternating 5 rounds each;
#   2. open loop at fixed rates (a quarter and half of nginx's best), with
#      oha's coordinated-omission correction: p50/p99/p99.9 latency.
# oha runs on the same two cores as the servers, so tail latency near
# saturation measures the contention as much as the server.
# With `page`, the bytes are the web page's script instead (`/assets/…js`,
# 39 KB), asked for with `Accept-Encoding: gzip` as a browser does: the
# gateway's embedded gzip copy against nginx's `gzip_static` of the same
# file.
#   bash benches/hit.sh [seconds per run] [result|page]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
TARGET="${2:-result}"
# shellcheck source=benches/oha.sh
source benches/oha.sh
command -v nginx >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >&2
cargo build --release --locked -p nws-mesh >&2

# shellcheck source=benches/lib.sh
source benches/lib.sh
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/www"
# Warnings only, but the line that says where the gateway listens.
start_mesh "$WORK/data" RUST_LOG=warn,nws_runtime::http=info,gateway=info

# A result of about 100 KB: the 12 MP photo fitted to 1200×900 at q80.
PHOTO="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
LOCATION="$(curl -sS -o "$WORK/www/result.jpg" -D - --data-binary "@$PHOTO" \
  "$GATEWAY/v1/watermark?format=jpeg&max_width=1200&max_height=900&quality=80" \
  | tr -d '\r' | sed -n 's/^content-location: //Ip')"
SIZE="$(stat -c %s "$WORK/www/result.jpg")"
curl -sS -o /dev/null -D - "$GATEWAY$LOCATION" | tr -d '\r' | grep -qi '^x-cache: HIT-L1' \
  || { echo "the result is not served from L1" >&2; exit 1; }
FILE=result.jpg
OHA_HEADERS=()
if [ "$TARGET" = page ]; then
  LOCATION="$(curl -sS "$GATEWAY/" | grep -o '/assets/index-[^"]*\.js')"
  curl -sS -o "$WORK/www/app.js" "$GATEWAY$LOCATION"
  curl -sS -o "$WORK/www/app.js.gz" -H 'accept-encoding: gzip' "$GATEWAY$LOCATION"
  SIZE="$(stat -c %s "$WORK/www/app.js.gz")"
  FILE=app.js
  OHA_HEADERS=(-H 'accept-encoding: gzip')
fi

NGINX_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$WORK/nginx.conf" <<CONF
user root;
worker_processes auto;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  types { image/jpeg jpg; text/javascript js; }
  gzip_static on;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
    location / { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" &
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/$FILE" && break; sleep 0.1; done
NGINX="http://127.0.0.1:$NGINX_PORT/$FILE"
cmp <(curl -sS "${OHA_HEADERS[@]}" "$NGINX") <(curl -sS "${OHA_HEADERS[@]}" "$GATEWAY$LOCATION") || { echo "different bytes" >&2; exit 1; }

run() { # name url [extra oha flags]
  local name="$1" url="$2"; shift 2
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -c 64 "${OHA_HEADERS[@]}" "$@" "$url" > "$WORK/$name.json"
  python3 - "$WORK/$name.json" "$name" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
summary, pct = report["summary"], report["latencyPercentiles"]
codes = report.get("statusCodeDistribution", {})
print(sys.argv[2], f'{summary["requestsPerSec"]:.0f}', f'{pct["p50"]*1000:.3f}', f'{pct["p99"]*1000:.3f}',
      f'{pct["p99.9"]*1000:.3f}', json.dumps(codes).replace(" ", ""))
PY
}

echo "result: $SIZE bytes at $LOCATION" >&2
# One discarded run each: the first seconds of a fresh server and fresh
# connections are slower for both.
run warm-gateway "$GATEWAY$LOCATION" > /dev/null
run warm-nginx "$NGINX" > /dev/null
: > "$WORK/closed.txt"
for ROUND in 1 2 3 4 5; do
  run "gateway-$ROUND" "$GATEWAY$LOCATION" >> "$WORK/closed.txt"
  run "nginx-$ROUND" "$NGINX" >> "$WORK/closed.txt"
done
NGINX_BEST="$(python3 - "$WORK/closed.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(int(statistics.median(float(r[1]) for r in rows if r[0].startswith("nginx"))))
PY
)"
: > "$WORK/open.txt"
for RATE in $((NGINX_BEST / 4)) $((NGINX_BEST / 2)); do
  run "gateway-open-$RATE" "$GATEWAY$LOCATION" -q "$RATE" --latency-correction >> "$WORK/open.txt"
  run "nginx-open-$RATE" "$NGINX" -q "$RATE" --latency-correction >> "$WORK/open.txt"
done

python3 - "$WORK/closed.txt" "$WORK/open.txt" "$SIZE" "$DURATION" "$TARGET" <<'PY'
import statistics, sys
closed = [line.split() for line in open(sys.argv[1])]
opened = [line.split() for line in open(sys.argv[2])]
size, duration, target = sys.argv[3], sys.argv[4], sys.argv[5]
def median(server, column):
    return statistics.median(float(r[column]) for r in closed if r[0].startswith(server + "-"))
what = "the page's script, gzip" if target == "page" else "JPEG result"
print(f"Bytes: {int(size)/1024:.1f} KiB, {what}; oha, 64 connections, {duration} s per run.\n")
print("| server | req/s (median of 5, closed loop) | runs | p50 ms | p99 ms |")
print("|---|---:|---|---:|---:|")
for server in ("gateway", "nginx"):
    runs = " / ".join(r[1] for r in closed if r[0].startswith(server + "-"))
    print(f"| {server} | {median(server, 1):.0f} | {runs} | {median(server, 2):.2f} | {median(server, 3):.2f} |")
gateway_runs = [float(r[1]) for r in closed if r[0].startswith("gateway-")]
nginx_runs = [float(r[1]) for r in closed if r[0].startswith("nginx-")]
pairs = [g / n for g, n in zip(gateway_runs, nginx_runs)]
print(f"\n**gateway / nginx: {median('gateway', 1) / median('nginx', 1):.2f}×** requests/s (ratio of medians); "
      f"per round: {' / '.join(f'{p:.2f}' for p in pairs)}, median {statistics.median(pairs):.2f}×\n")
print("Open loop at fixed rates (latency corrected for coordinated omission):\n")
print("| server | rate (req/s) | achieved | p50 ms | p99 ms | p99.9 ms | status codes |")
print("|---|---:|---:|---:|---:|---:|---|")
for r in opened:
    server, rate = r[0].split("-open-")
    print(f"| {server} | {rate} | {r[1]} | {float(r[2]):.2f} | {float(r[3]):.2f} | {float(r[4]):.2f} | {r[5]} |")
PY
