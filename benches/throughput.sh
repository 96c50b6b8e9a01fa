#!/usr/bin/env bash
# Images per second and peak memory for the 12 MP photo, through the real
# mesh (release build) with 1 and then 2 optimizer workers, next to libvips
# (pyvips, one thread per image) run 1 and 2 at a time in the same run.
#   bash benches/throughput.sh [images]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-40}"
IMAGE="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"
# shellcheck source=benches/lib.sh
source benches/lib.sh
# libvips from Debian, pyvips from PyPI.
use_pyvips
cargo build --release --locked -p nws-mesh >&2

echo "| run | parallel | images/s | peak RSS (MiB) |"
echo "|---|---:|---:|---:|"
for WORKERS in 1 2; do
  DATA="$(mktemp -d)"
  start_mesh "$DATA" NWS_OPTIMIZER_WORKERS="$WORKERS"
  "$VENV/bin/python" benches/throughput.py mesh --gateway "$GATEWAY" --image "$IMAGE" \
    --count "$COUNT" --parallel "$WORKERS" --pid "$MESH_PID"
  kill "$MESH_PID"; wait "$MESH_PID" 2>/dev/null || true
  rm -rf "$DATA"
done
for PARALLEL in 1 2; do
  "$VENV/bin/python" benches/throughput.py vips --image "$IMAGE" --count "$COUNT" --parallel "$PARALLEL"
done
