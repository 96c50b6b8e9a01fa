#!/usr/bin/env bash
# Resident memory of the release mesh: peak per test photo (30 sequential
# uploads each, a fresh mesh per photo), peak under a mixed stream of every
# photo at 8 concurrent uploads, and RSS after 10 idle seconds against the
# start, all with the L1 memory cache off. Prints Markdown tables for
# BENCHMARKS.md; raw RSS samples (every ~20 ms) go to the CSV named by
# NWS_MEMORY_CSV (default /tmp/nws-memory.csv).
#   bash benches/memory.sh [memory.py options, e.g. --runs 30 --mixed 120 --separate]
# To compare allocators without rebuilding, preload one into the services:
#   bash benches/memory.sh --preload /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 --label "jemalloc 5.3 (LD_PRELOAD)"
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
build_services
python3 benches/memory.py --bin-dir "$CARGO_TARGET_DIR/release" \
  --images "${NWS_TEST_IMAGES:-../shared/testdata/images}" \
  --csv "${NWS_MEMORY_CSV:-/tmp/nws-memory.csv}" "$@"
