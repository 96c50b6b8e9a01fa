#!/usr/bin/env bash
# Soak: 10,000 mixed uploads (every test photo in several output formats
# and sizes, plus a text file, a truncated JPEG and a truncated PNG) through
# the release mesh, 8 at once, RSS of each process sampled every 100 ms.
# Passes when, per process, the mean RSS of the last tenth of the uploads is
# within 10% of the second tenth's. Prints a Markdown table of tenths; raw
# samples go to NWS_SOAK_CSV (default /tmp/nws-soak.csv). Takes 15–25 min
# on 2 cores.
#   bash benches/soak.sh [soak.py options, e.g. --uploads 2000 --separate]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
build_services
python3 benches/soak.py --bin-dir "$CARGO_TARGET_DIR/release" \
  --images "${NWS_TEST_IMAGES:-../shared/testdata/images}" \
  --csv "${NWS_SOAK_CSV:-/tmp/nws-soak.csv}" "$@"
