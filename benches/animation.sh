#!/usr/bin/env bash
# Animated GIFs kept frame by frame (animated=keep) through the real mesh
# (release build, one optimizer worker), next to libvips making the same
# animated WebP in the same run. Prints a Markdown table for BENCHMARKS.md
# and the load average before and after.
#   bash benches/animation.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-7}"
IMAGES="${NWS_TEST_IMAGES:-../shared/testdata/images}"
# shellcheck source=benches/lib.sh
source benches/lib.sh
# libvips from Debian, pyvips from PyPI.
use_pyvips
start_bench_mesh NWS_OPTIMIZER_WORKERS=1
with_load_average "$VENV/bin/python" benches/animation.py --gateway "$GATEWAY" --images "$IMAGES" --runs "$RUNS"
