#!/usr/bin/env bash
# Per-image pipeline timings through the real mesh (release build, one
# optimizer worker), next to libvips doing the same resize + encode in the
# same run, then whole uploads of the 12 MP photo as JPEG, WebP and AVIF
# with their SSIM. Prints Markdown tables for BENCHMARKS.md, and the load
# average before and after (other work on the machine skews every figure).
#   bash benches/pipeline.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-15}"
IMAGES="${NWS_TEST_IMAGES:-../shared/testdata/images}"
# shellcheck source=benches/lib.sh
source benches/lib.sh
# libvips from Debian, pyvips from PyPI, djpeg/cjpeg for the libjpeg-turbo floor.
use_pyvips libjpeg-turbo-progs
start_bench_mesh NWS_OPTIMIZER_WORKERS=1
with_load_average "$VENV/bin/python" benches/pipeline_report.py --gateway "$GATEWAY" --images "$IMAGES" --runs "$RUNS"
