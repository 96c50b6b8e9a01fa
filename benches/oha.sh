# Sourced by the benches that load the gateway over HTTP: oha 1.16 from
# crates.io, installed once under the cache directory; sets OHA.
CACHE="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OHA="$CACHE/tools/oha/bin/oha"
if [ ! -x "$OHA" ]; then
  CARGO_TARGET_DIR="$CACHE/oha-build" cargo install oha@1.16.0 --locked --root "$CACHE/tools/oha" >&2
fi
