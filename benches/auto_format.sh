#!/usr/bin/env bash
# `format=auto` as browsers meet it: a 12 MP photo uploaded as a form with
# Chrome's navigation Accept (naming AVIF and WebP) against the same upload
# with `Accept: image/jpeg`, alternating, through the release mesh (2
# optimizer workers); first with the defaults, then with NWS_AUTO_AVIF=true.
#   bash benches/auto_format.sh [uploads of each kind]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-30}"
IMAGE="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p nws-mesh >&2
  BIN_DIR="$CARGO_TARGET_DIR/release"
fi

echo "| run | Chrome Accept, median ms | Accept: image/jpeg, median ms | ratio | answered with |"
echo "|---|---:|---:|---:|---|"
for AUTO_AVIF in false true; do
  DATA="$(mktemp -d)"
  NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
  NWS_DATA_DIR="$DATA" NWS_LOG_FORMAT=json NWS_AUTO_AVIF="$AUTO_AVIF" \
    "$BIN_DIR/nws-mesh" > "$DATA/mesh.log" 2>&1 &
  MESH=$!
  for _ in $(seq 100); do grep -q '"service":"gateway"' "$DATA/mesh.log" 2>/dev/null && break; sleep 0.1; done
  ADDR="$(grep -o '"service":"gateway","addr":"[^"]*"' "$DATA/mesh.log" | sed 's/.*"addr":"//; s/"$//')"
  if [ "$AUTO_AVIF" = false ]; then
    python3 benches/auto_format.py --gateway "http://$ADDR" --image "$IMAGE" --count "$COUNT" \
      --label "defaults (AVIF made in the background)" --repeat
  else
    # Each Chrome upload now waits for AVIF: fewer of them.
    python3 benches/auto_format.py --gateway "http://$ADDR" --image "$IMAGE" --count "$(( COUNT / 3 > 3 ? COUNT / 3 : 3 ))" \
      --label "NWS_AUTO_AVIF=true"
  fi
  kill "$MESH"; wait "$MESH" 2>/dev/null || true
  rm -rf "$DATA"
done
