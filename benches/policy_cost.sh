#!/usr/bin/env bash
# What authentication and rate limits cost on the cache-hit path: release
# meshes side by side, one open (no keys, no limits), one verifying an
# ES256 token and one an RS256 token from a JWKS on every request, both
# also drawing every request from a per-caller bucket (limits set high
# enough never to refuse, so the bucket is consulted but the answer is
# always yes), and a fourth as the ES256 one with the buckets kept in
# Redis (NWS_RATE_LIMIT_REDIS, the Redis at NWS_TEST_REDIS_URL, default
# 127.0.0.1:6379): one script call per request. Alternating rounds of oha
# on GET /v1/images/{key} (L1 hits), 64 connections, the token in every
# request.
#   bash benches/policy_cost.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-8}"
ROUNDS="${2:-5}"
# shellcheck source=benches/oha.sh
source benches/oha.sh
# shellcheck source=benches/mesh.sh
source benches/mesh.sh
CACHE="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}"
export NWS_TEST_PYTHON="${NWS_TEST_PYTHON:-$CACHE/tools/venv/bin/python}"
cargo build --release --locked -p nws-mesh >&2
cargo build --release --locked -p nws-runtime --example mint_token --features test-support >&2
PHOTO="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"

WORK="$(mktemp -d)"
trap 'stop_meshes; kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

MINT="$CARGO_TARGET_DIR/release/examples/mint_token"
ES_TOKEN="$("$MINT" "$WORK/es.json" ES256 images:read images:write)"
RS_TOKEN="$("$MINT" "$WORK/rs.json" RS256 images:read images:write)"
LIMITS=(NWS_RATE_LIMIT_RPS=1000000 NWS_RATE_LIMIT_BURST=1000000 NWS_READ_RATE_LIMIT_RPS=1000000 NWS_READ_RATE_LIMIT_BURST=1000000)
OPEN="$(start_mesh open)"
ES="$(start_mesh es NWS_AUTH_JWKS="$WORK/es.json" "${LIMITS[@]}")"
RS="$(start_mesh rs NWS_AUTH_JWKS="$WORK/rs.json" "${LIMITS[@]}")"
SHARED="$(start_mesh shared NWS_AUTH_JWKS="$WORK/es.json" "${LIMITS[@]}" NWS_RATE_LIMIT_REDIS=true \
  NWS_REDIS_URL="${NWS_TEST_REDIS_URL:-redis://127.0.0.1:6379}" NWS_REDIS_PREFIX="nws-bench-$$:")"

result() { # gateway token
  curl -sS -o /dev/null -D - -H "authorization: Bearer $2" --data-binary "@$PHOTO" \
    "$1/v1/watermark?format=jpeg&max_width=1200&max_height=900&quality=80" \
    | tr -d '\r' | sed -n 's/^content-location: //Ip'
}
HIT_OPEN="$OPEN$(result "$OPEN" none)"
HIT_ES="$ES$(result "$ES" "$ES_TOKEN")"
HIT_RS="$RS$(result "$RS" "$RS_TOKEN")"
HIT_SHARED="$SHARED$(result "$SHARED" "$ES_TOKEN")"

echo "round open es256 rs256 es256+redis (requests/s; ratio to open)"
for round in $(seq "$ROUNDS"); do
  open=$(hits open "$HIT_OPEN")
  es=$(hits es "$HIT_ES" -H "authorization: Bearer $ES_TOKEN")
  rs=$(hits rs "$HIT_RS" -H "authorization: Bearer $RS_TOKEN")
  shared=$(hits shared "$HIT_SHARED" -H "authorization: Bearer $ES_TOKEN")
  python3 - "$round" "$open" "$es" "$rs" "$shared" <<'PY'
import sys
round_, *lines = sys.argv[1:]
rates = [int(line.split()[1]) for line in lines]
codes = [line.split()[2] for line in lines]
ratios = " ".join("%.3f" % (rate / rates[0]) for rate in rates[1:])
print(round_, *rates, "|", ratios, *codes)
PY
done
